//! The environment a deployment gives each function, read from the templates themselves: the
//! SAM template (`infra/aws/template.yaml`: Globals and each function's variables, with
//! parameters, pseudo parameters, conditions, `!Ref`, `!Sub`, `!If`, `!GetAtt`, `!Join` and
//! Secrets Manager / SSM dynamic references evaluated) and the Knative manifests
//! (`infra/knative/base`: each Service's `env` and `envFrom`, with ConfigMap and Secret
//! references filled in).
//!
//! Values that only exist once deployed (a resource's physical id, a secret's content) come from
//! [`Values`]; everything else is the template's own.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize as _;
use serde_yaml::Value as Yaml;

/// What a test deployment fills in.
#[derive(Debug, Clone, Default)]
pub struct Values {
    /// Template parameters (those without a default must be given).
    pub parameters: HashMap<String, String>,
    /// The content of secrets, by key (Secrets Manager JSON keys, SSM parameter names, Kubernetes
    /// Secret keys).
    pub secrets: HashMap<String, String>,
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    List(Vec<String>),
    NoValue,
}

impl Val {
    fn text(self) -> Result<String, String> {
        match self {
            Val::Str(s) => Ok(s),
            Val::List(l) => Ok(l.join(",")),
            Val::NoValue => Err("AWS::NoValue where a value is needed".into()),
        }
    }
}

/// The SAM template.
pub struct SamTemplate {
    root: Yaml,
}

impl SamTemplate {
    /// Reads the template.
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("read the SAM template");
        Self {
            root: serde_yaml::from_str(&text).expect("the SAM template is YAML"),
        }
    }

    /// Every function: its logical id and its binary (`Metadata.BuildProperties.Binary`).
    pub fn functions(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(resources) = self.root.get("Resources").and_then(Yaml::as_mapping) {
            for (id, resource) in resources {
                if resource.get("Type").and_then(Yaml::as_str) != Some("AWS::Serverless::Function")
                {
                    continue;
                }
                let binary = resource
                    .get("Metadata")
                    .and_then(|m| m.get("BuildProperties"))
                    .and_then(|b| b.get("Binary"))
                    .and_then(Yaml::as_str);
                if let (Some(id), Some(binary)) = (id.as_str(), binary) {
                    out.push((id.to_string(), binary.to_string()));
                }
            }
        }
        out.sort();
        out
    }

    /// The environment the template gives `function` (Globals, then its own variables).
    pub fn environment(
        &self,
        function: &str,
        values: &Values,
    ) -> Result<BTreeMap<String, String>, String> {
        let evaluator = Evaluator {
            root: &self.root,
            values,
        };
        let mut env = BTreeMap::new();
        let sources = [
            self.root
                .get("Globals")
                .and_then(|g| g.get("Function"))
                .and_then(|f| f.get("Environment"))
                .and_then(|e| e.get("Variables")),
            self.root
                .get("Resources")
                .and_then(|r| r.get(function))
                .and_then(|f| f.get("Properties"))
                .and_then(|p| p.get("Environment"))
                .and_then(|e| e.get("Variables")),
        ];
        for variables in sources.into_iter().flatten() {
            for (name, value) in variables.as_mapping().into_iter().flatten() {
                let name = name.as_str().ok_or("a variable name is not a string")?;
                match evaluator
                    .eval(value)
                    .map_err(|e| format!("{function}.{name}: {e}"))?
                {
                    Val::NoValue => {
                        env.remove(name);
                    }
                    v => {
                        env.insert(name.to_string(), v.text()?);
                    }
                }
            }
        }
        Ok(env)
    }
}

struct Evaluator<'a> {
    root: &'a Yaml,
    values: &'a Values,
}

impl Evaluator<'_> {
    fn eval(&self, value: &Yaml) -> Result<Val, String> {
        match value {
            Yaml::String(s) => Ok(Val::Str(s.clone())),
            Yaml::Number(n) => Ok(Val::Str(n.to_string())),
            Yaml::Bool(b) => Ok(Val::Str(b.to_string())),
            Yaml::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let name = tag.trim_start_matches('!');
                let function = match name {
                    "Ref" => "Ref".to_string(),
                    "Condition" => "Condition".to_string(),
                    other => format!("Fn::{other}"),
                };
                self.intrinsic(&function, &tagged.value)
            }
            Yaml::Mapping(map) if map.len() == 1 => {
                let (key, inner) = map.iter().next().expect("one entry");
                match key.as_str() {
                    Some(k) if k == "Ref" || k.starts_with("Fn::") => self.intrinsic(k, inner),
                    _ => Err(format!("cannot evaluate {value:?}")),
                }
            }
            _ => Err(format!("cannot evaluate {value:?}")),
        }
    }

    fn intrinsic(&self, function: &str, arg: &Yaml) -> Result<Val, String> {
        match function {
            "Ref" => self.reference(arg.as_str().ok_or("Ref of a non-string")?),
            "Fn::GetAtt" => {
                let target = match arg {
                    Yaml::String(s) => s.clone(),
                    Yaml::Sequence(parts) => parts
                        .iter()
                        .filter_map(Yaml::as_str)
                        .collect::<Vec<_>>()
                        .join("."),
                    _ => return Err("GetAtt of an unexpected shape".into()),
                };
                Ok(Val::Str(format!(
                    "arn:aws:test:us-east-1:123456789012:{target}"
                )))
            }
            "Fn::Sub" => {
                let (text, vars) = match arg {
                    Yaml::String(s) => (s.clone(), None),
                    Yaml::Sequence(parts) if parts.len() == 2 => (
                        parts[0].as_str().ok_or("Sub text")?.to_string(),
                        parts[1].as_mapping(),
                    ),
                    _ => return Err("Sub of an unexpected shape".into()),
                };
                self.substitute(&text, vars)
            }
            "Fn::If" => {
                let parts = arg.as_sequence().ok_or("If needs a list")?;
                let condition = parts.first().and_then(Yaml::as_str).ok_or("If condition")?;
                let branch = if self.condition(condition)? { 1 } else { 2 };
                self.eval(parts.get(branch).ok_or("If branch")?)
            }
            "Fn::Join" => {
                let parts = arg.as_sequence().ok_or("Join needs a list")?;
                let separator = parts.first().and_then(Yaml::as_str).unwrap_or_default();
                let items = match self.eval(parts.get(1).ok_or("Join items")?) {
                    Ok(Val::List(items)) => items,
                    Ok(Val::Str(s)) => vec![s],
                    Ok(Val::NoValue) => Vec::new(),
                    Err(_) => parts[1]
                        .as_sequence()
                        .ok_or("Join items")?
                        .iter()
                        .map(|item| self.eval(item).and_then(Val::text))
                        .collect::<Result<_, _>>()?,
                };
                Ok(Val::Str(items.join(separator)))
            }
            "Fn::Equals" => {
                let parts = arg.as_sequence().ok_or("Equals needs a list")?;
                let a = self.eval(&parts[0])?;
                let b = self.eval(&parts[1])?;
                Ok(Val::Str((a == b).to_string()))
            }
            "Fn::Not" => {
                let inner = arg.as_sequence().and_then(|p| p.first()).ok_or("Not")?;
                Ok(Val::Str((!self.truth(inner)?).to_string()))
            }
            "Fn::And" | "Fn::Or" => {
                let parts = arg.as_sequence().ok_or("And/Or needs a list")?;
                let truths: Vec<bool> = parts
                    .iter()
                    .map(|p| self.truth(p))
                    .collect::<Result<_, _>>()?;
                let all = function == "Fn::And";
                Ok(Val::Str(
                    if all {
                        truths.iter().all(|t| *t)
                    } else {
                        truths.iter().any(|t| *t)
                    }
                    .to_string(),
                ))
            }
            "Condition" => Ok(Val::Str(
                self.condition(arg.as_str().ok_or("Condition name")?)?
                    .to_string(),
            )),
            other => Err(format!("{other} is not supported here")),
        }
    }

    fn truth(&self, value: &Yaml) -> Result<bool, String> {
        Ok(self.eval(value)?.text()? == "true")
    }

    fn condition(&self, name: &str) -> Result<bool, String> {
        let definition = self
            .root
            .get("Conditions")
            .and_then(|c| c.get(name))
            .ok_or_else(|| format!("no condition {name}"))?;
        self.truth(definition)
    }

    fn reference(&self, name: &str) -> Result<Val, String> {
        let pseudo = match name {
            "AWS::NoValue" => return Ok(Val::NoValue),
            "AWS::Region" => Some("us-east-1"),
            "AWS::AccountId" => Some("123456789012"),
            "AWS::Partition" => Some("aws"),
            "AWS::URLSuffix" => Some("amazonaws.com"),
            "AWS::StackName" => Some("messaging"),
            _ => None,
        };
        if let Some(value) = pseudo {
            return Ok(Val::Str(value.into()));
        }
        if let Some(parameter) = self.root.get("Parameters").and_then(|p| p.get(name)) {
            let value = match self.values.parameters.get(name) {
                Some(v) => v.clone(),
                None => match parameter.get("Default") {
                    Some(Yaml::String(s)) => s.clone(),
                    Some(Yaml::Number(n)) => n.to_string(),
                    _ => return Err(format!("parameter {name} has no default and no value")),
                },
            };
            let is_list = parameter
                .get("Type")
                .and_then(Yaml::as_str)
                .is_some_and(|t| t.starts_with("CommaDelimitedList") || t.starts_with("List<"));
            return Ok(if is_list {
                Val::List(
                    value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            } else {
                Val::Str(value)
            });
        }
        if self
            .root
            .get("Resources")
            .and_then(|r| r.get(name))
            .is_some()
        {
            // A resource's physical id: only known once deployed (lower case, as bucket names
            // must be).
            return Ok(Val::Str(format!("test-{}", name.to_ascii_lowercase())));
        }
        Err(format!("Ref to unknown {name}"))
    }

    fn substitute(&self, text: &str, vars: Option<&serde_yaml::Mapping>) -> Result<Val, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').ok_or("unclosed ${")? + start;
            let name = &rest[start + 2..end];
            let value = match vars.and_then(|v| v.get(name)) {
                Some(v) => self.eval(v)?.text()?,
                None if name.contains('.') && !name.starts_with("AWS::") => self
                    .intrinsic("Fn::GetAtt", &Yaml::String(name.to_string()))?
                    .text()?,
                None => self.reference(name)?.text()?,
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        self.resolve_dynamic(&out).map(Val::Str)
    }

    /// `{{resolve:secretsmanager:ID:SecretString:KEY}}` and `{{resolve:ssm:NAME}}`.
    fn resolve_dynamic(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{resolve:") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").ok_or("unclosed {{resolve:")? + start;
            let reference = &rest[start + "{{resolve:".len()..end];
            let key = if let Some(sm) = reference.strip_prefix("secretsmanager:") {
                sm.rsplit(':').next().unwrap_or_default().to_string()
            } else if let Some(name) = reference.strip_prefix("ssm:") {
                name.to_string()
            } else {
                return Err(format!("unsupported dynamic reference {reference}"));
            };
            let value = self
                .values
                .secrets
                .get(&key)
                .ok_or_else(|| format!("the deployment's secrets have no {key}"))?;
            out.push_str(value);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A Knative Service (or a Job, such as the schema migration) of the manifests: its name, its
/// binary (from the image `messaging/<binary>:tag`) and its environment.
#[derive(Debug, Clone)]
pub struct KnativeService {
    /// `metadata.name`.
    pub name: String,
    /// The binary its image runs.
    pub binary: String,
    /// Its environment, ConfigMap and Secret references filled in from the manifests and
    /// `values.secrets`.
    pub env: BTreeMap<String, String>,
}

/// Every Knative Service and Job in the YAML files of `dir` (multi-document files), with
/// environments.
pub fn knative_services(dir: &Path, values: &Values) -> Result<Vec<KnativeService>, String> {
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Yaml::deserialize(document).map_err(|e| format!("{}: {e}", file.display()))?;
            documents.push(value);
        }
    }
    let config_maps: HashMap<String, BTreeMap<String, String>> = documents
        .iter()
        .filter(|d| d.get("kind").and_then(Yaml::as_str) == Some("ConfigMap"))
        .filter_map(|d| {
            let name = d.get("metadata")?.get("name")?.as_str()?.to_string();
            let data = d
                .get("data")?
                .as_mapping()?
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect();
            Some((name, data))
        })
        .collect();
    let mut services = Vec::new();
    for d in &documents {
        let kind = d.get("kind").and_then(Yaml::as_str);
        let api_version = d
            .get("apiVersion")
            .and_then(Yaml::as_str)
            .unwrap_or_default();
        let knative_service =
            kind == Some("Service") && api_version.starts_with("serving.knative.dev");
        // A Job's pod template sits where a Service's does (the schema migration is one).
        let job = kind == Some("Job") && api_version == "batch/v1";
        if !knative_service && !job {
            continue;
        }
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let image = container["image"].as_str().unwrap_or_default();
        let binary = image
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_sequence().into_iter().flatten() {
            if let Some(map) = from["configMapRef"]["name"].as_str() {
                let data = config_maps
                    .get(map)
                    .ok_or_else(|| format!("{name}: no ConfigMap {map}"))?;
                env.extend(data.clone());
            }
        }
        for variable in container["env"].as_sequence().into_iter().flatten() {
            let key = variable["name"].as_str().unwrap_or_default().to_string();
            if let Some(value) = variable["value"].as_str() {
                env.insert(key, value.to_string());
            } else if let Some(secret_key) = variable["valueFrom"]["secretKeyRef"]["key"].as_str() {
                let optional =
                    variable["valueFrom"]["secretKeyRef"]["optional"].as_bool() == Some(true);
                match values.secrets.get(secret_key) {
                    Some(v) => {
                        env.insert(key, v.clone());
                    }
                    None if optional => {}
                    None => return Err(format!("{name}: the secrets have no {secret_key}")),
                }
            } else if let Some(config_key) =
                variable["valueFrom"]["configMapKeyRef"]["key"].as_str()
            {
                let map = variable["valueFrom"]["configMapKeyRef"]["name"]
                    .as_str()
                    .unwrap_or_default();
                if let Some(v) = config_maps.get(map).and_then(|m| m.get(config_key)) {
                    env.insert(key, v.clone());
                }
            }
        }
        services.push(KnativeService { name, binary, env });
    }
    Ok(services)
}
