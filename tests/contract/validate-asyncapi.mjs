#!/usr/bin/env node
// Validates an AsyncAPI document with the AsyncAPI parser (scripts/conformance).
// Usage: node validate-asyncapi.mjs path/to/asyncapi.json [--strict]
// Prints every diagnostic; exits 1 if any diagnostic has severity Error (0)
// (with --strict, also on Warning (1)); exits 2 on usage / read / JSON errors.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const args = process.argv.slice(2);
const strict = args.includes('--strict');
const file = args.find((a) => !a.startsWith('--'));
if (!file) {
  console.error('usage: node validate.mjs <asyncapi.json> [--strict]');
  process.exit(2);
}

// Spectral DiagnosticSeverity: 0 = Error, 1 = Warning, 2 = Information, 3 = Hint
const NAMES = { 0: 'error', 1: 'warning', 2: 'info', 3: 'hint' };

let text;
try {
  text = await readFile(file, 'utf8');
  JSON.parse(text); // fail fast with a clear message on invalid JSON
} catch (err) {
  console.error(`${file}: cannot read/parse JSON: ${err.message}`);
  process.exit(2);
}

const parser = new Parser();
// `source` lets relative file $refs resolve against the document's location.
const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });

for (const d of diagnostics) {
  const where = d.path && d.path.length ? '/' + d.path.join('/') : '(root)';
  const line = d.range ? `:${d.range.start.line + 1}:${d.range.start.character + 1}` : '';
  console.log(`${NAMES[d.severity] ?? d.severity}\t${d.code}\t${where}${line}\t${d.message}`);
}

const failAt = strict ? DiagnosticSeverity.Warning : DiagnosticSeverity.Error;
const failing = diagnostics.filter((d) => d.severity <= failAt);
const counts = Object.fromEntries(Object.values(NAMES).map((n) => [n, 0]));
for (const d of diagnostics) counts[NAMES[d.severity]]++;
console.log(
  `${file}: ${document ? 'parsed' : 'NOT parsed'}; ` +
    Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', '),
);
process.exit(failing.length > 0 || !document ? 1 : 0);
