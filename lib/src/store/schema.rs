//! The schema: every collection's name and indexes, in one place, and its version.
//!
//! Creating indexes is a deploy-time step, not a cold-start cost: [`MongoStore::migrate`] creates
//! them (safe to run again and concurrently; it changes the message retention, a TTL index, in
//! place) and records [`SCHEMA_VERSION`] in the `meta` collection. It runs as the `migrate`
//! function (a CloudFormation custom resource on AWS, a Job on Kubernetes) and when the local
//! stack starts. A function checks as it starts, with one read, that the database is at least
//! at the version it was built for ([`MongoStore::check_schema`]); the check runs beside the
//! start, and until it has passed no operation reaches MongoDB: on a database not migrated each
//! fails saying what to run ([`MongoStore::check_schema_at_start`]).

use super::*;

/// Collection names.
pub mod collections {
    /// Users (`users`).
    pub const USERS: &str = "users";
    /// Conversations (`conversations`).
    pub const CONVERSATIONS: &str = "conversations";
    /// Messages (`messages`).
    pub const MESSAGES: &str = "messages";
    /// What each device has received, per conversation (`device_cursors`).
    pub const DEVICE_CURSORS: &str = "device_cursors";
    /// Media metadata (`media`).
    pub const MEDIA: &str = "media";
    /// Dead letters (`dead_letters`).
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// Agent registry (`agents`).
    pub const AGENTS: &str = "agents";
    /// Password hashes, apart from profiles (`credentials`).
    pub const CREDENTIALS: &str = "credentials";
    /// Pending verification codes, hashed (`verification_codes`).
    pub const VERIFICATION_CODES: &str = "verification_codes";
    /// Refresh tokens, hashed, with their families (`refresh_tokens`).
    pub const REFRESH_TOKENS: &str = "refresh_tokens";
    /// Push device tokens (`devices`).
    pub const DEVICES: &str = "devices";
    /// Codes recorded by the local code sender instead of being sent (`code_outbox`, local use).
    pub const CODE_OUTBOX: &str = "code_outbox";
    /// Each device's published identity keys and fallback key (`device_keys`).
    pub const DEVICE_KEYS: &str = "device_keys";
    /// Published one-time keys, each handed out once (`one_time_keys`).
    pub const ONE_TIME_KEYS: &str = "one_time_keys";
    /// Each device's queue of `to_device` messages (`to_device`).
    pub const TO_DEVICE: &str = "to_device";
    /// The schema's version record (`meta`).
    pub const META: &str = "meta";
}

/// The unique index that gives each message of a conversation its own sequence number (a
/// send that collides on it lost the race for that number).
pub const CONVERSATION_SEQUENCE_INDEX: &str = "conversation_sequence_unique";

/// The version of the collections and indexes this build expects. Raise it with any change to
/// them (and to `SchemaVersion` in `infra/aws/template.yaml`, which `validate-infra` checks), so
/// that functions refuse to start on a database the migration has not reached yet.
pub const SCHEMA_VERSION: i64 = 2;

/// What [`MongoStore::migrate`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// The version now recorded.
    pub version: i64,
    /// The message retention the TTL index now has, in seconds.
    pub retention_secs: i64,
}

impl MongoStore {
    /// The deploy-time step: creates every index ([`MongoStore::ensure_indexes`]), then records
    /// [`SCHEMA_VERSION`] (never lowering a newer one a later build recorded) and the retention.
    pub async fn migrate(&self) -> Result<SchemaState> {
        self.ensure_indexes().await?;
        let retention_secs = self.options.message_retention.as_secs() as i64;
        let meta = self.db.collection::<Document>(collections::META);
        meta.update_one(
            doc! {"_id": "schema"},
            doc! {
                "$max": {"version": SCHEMA_VERSION},
                "$set": {"retention_secs": retention_secs, "migrated_at": DateTime::now()},
            },
        )
        .upsert(true)
        .await?;
        let version = meta
            .find_one(doc! {"_id": "schema"})
            .await?
            .and_then(|d| d.get_i64("version").ok())
            .unwrap_or(SCHEMA_VERSION);
        Ok(SchemaState {
            version,
            retention_secs,
        })
    }

    /// The one check at a function's start (one read): the database has been migrated to at
    /// least [`SCHEMA_VERSION`]. The error says what to run.
    pub async fn check_schema(&self) -> Result<()> {
        // Not `deadline`: that waits for this check.
        let record = within(self.options.operation_timeout, async {
            Ok(self
                .db
                .collection::<Document>(collections::META)
                .find_one(doc! {"_id": "schema"})
                .await?)
        })
        .await?;
        let found = record.as_ref().and_then(|d| d.get_i64("version").ok());
        match found {
            Some(version) if version >= SCHEMA_VERSION => Ok(()),
            _ => Err(Error::dependency(
                "mongodb",
                format!(
                    "database `{}` is at schema version {} and this build needs {SCHEMA_VERSION}: \
                     run the migration first (the `migrate` function: on AWS the template's \
                     SchemaMigration resource runs it, on Kubernetes the `migrate` Job, locally \
                     `local-stack` at start)",
                    self.db.name(),
                    found.map_or("none (never migrated)".to_string(), |v| v.to_string()),
                ),
            )),
        }
    }

    /// Creates every collection's indexes; safe to run again and concurrently. When the
    /// message retention changed, the TTL index is updated in place (`collMod`). Part of
    /// [`MongoStore::migrate`]; call that instead.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let unique = |name: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_string())
                .build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
        let ttl = |name: &str, after: Duration| {
            IndexOptions::builder()
                .name(name.to_string())
                .expire_after(after)
                .build()
        };
        // Unique only where the field is a string: most users have a phone or an email, not both.
        let unique_when_present = |name: &str, field: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_string())
                .partial_filter_expression(doc! { field: { "$type": "string" } })
                .build()
        };
        let plan: Vec<(&str, Vec<IndexModel>)> = vec![
            (
                collections::MESSAGES,
                vec![
                    index(doc! {"message_id": 1}, unique("message_id_unique")),
                    index(
                        doc! {"idempotency_key": 1},
                        unique("idempotency_key_unique"),
                    ),
                    index(
                        doc! {"conversation_id": 1, "sequence_number": 1},
                        unique(CONVERSATION_SEQUENCE_INDEX),
                    ),
                    index(
                        doc! {"conversation_id": 1, "timestamp": -1},
                        named("conversation_timestamp"),
                    ),
                    // A user's own messages: data export and erasure.
                    index(doc! {"sender_id": 1}, named("sender")),
                    // The outbox: only messages whose after-commit work is not done yet.
                    index(
                        doc! {"fanout_due_at": 1},
                        IndexOptions::builder()
                            .name("fanout_due".to_string())
                            .partial_filter_expression(doc! {"fanout_due_at": {"$exists": true}})
                            .build(),
                    ),
                ],
            ),
            (
                collections::DEVICE_CURSORS,
                vec![
                    index(
                        doc! {"user_id": 1, "device_id": 1, "conversation_id": 1},
                        unique("user_device_conversation_unique"),
                    ),
                    index(doc! {"conversation_id": 1}, named("conversation")),
                ],
            ),
            (
                collections::USERS,
                vec![
                    index(doc! {"user_id": 1}, unique("user_id_unique")),
                    index(
                        doc! {"phone": 1},
                        unique_when_present("phone_unique", "phone"),
                    ),
                    index(
                        doc! {"email": 1},
                        unique_when_present("email_unique", "email"),
                    ),
                ],
            ),
            (
                collections::CONVERSATIONS,
                vec![
                    index(
                        doc! {"conversation_id": 1},
                        unique("conversation_id_unique"),
                    ),
                    index(doc! {"participants": 1}, named("participants")),
                    // One 1:1 or agent conversation per pair (set by the HTTP API).
                    index(
                        doc! {"pair_key": 1},
                        unique_when_present("pair_key_unique", "pair_key"),
                    ),
                ],
            ),
            (
                collections::MEDIA,
                vec![
                    index(doc! {"media_id": 1}, unique("media_id_unique")),
                    index(doc! {"conversation_id": 1}, named("conversation")),
                    index(doc! {"uploader_id": 1}, named("uploader")),
                ],
            ),
            (
                collections::DEAD_LETTERS,
                vec![
                    index(doc! {"dead_letter_id": 1}, unique("dead_letter_id_unique")),
                    index(doc! {"created_at": -1}, named("created_at_desc")),
                    index(
                        doc! {"expires_at": 1},
                        ttl("expires_at_ttl", Duration::ZERO),
                    ),
                ],
            ),
            (
                collections::AGENTS,
                vec![index(doc! {"agent_id": 1}, unique("agent_id_unique"))],
            ),
            (
                collections::VERIFICATION_CODES,
                vec![index(
                    doc! {"purge_at": 1},
                    ttl("purge_at_ttl", Duration::ZERO),
                )],
            ),
            (
                collections::REFRESH_TOKENS,
                vec![
                    index(doc! {"family_id": 1}, named("family")),
                    index(doc! {"user_id": 1}, named("user")),
                    index(
                        doc! {"expires_at": 1},
                        ttl("expires_at_ttl", Duration::ZERO),
                    ),
                ],
            ),
            (
                collections::DEVICES,
                vec![
                    index(
                        doc! {"user_id": 1, "device_id": 1},
                        unique("user_device_unique"),
                    ),
                    index(doc! {"token": 1}, unique("token_unique")),
                ],
            ),
            (
                collections::DEVICE_KEYS,
                vec![index(
                    doc! {"user_id": 1, "device_id": 1},
                    unique("user_device_unique"),
                )],
            ),
            (
                collections::ONE_TIME_KEYS,
                vec![
                    index(
                        doc! {"user_id": 1, "device_id": 1, "key_id": 1},
                        unique("user_device_key_unique"),
                    ),
                    // Claims take the oldest key of a device.
                    index(
                        doc! {"user_id": 1, "device_id": 1, "created_at": 1},
                        named("user_device_created"),
                    ),
                ],
            ),
            (
                collections::TO_DEVICE,
                vec![
                    index(
                        doc! {"user_id": 1, "device_id": 1, "sequence": 1},
                        unique("user_device_sequence_unique"),
                    ),
                    // A sender's retry finds what it stored before.
                    index(
                        doc! {"user_id": 1, "device_id": 1, "sender_id": 1, "message_id": 1},
                        unique("user_device_sender_message_unique"),
                    ),
                    index(
                        doc! {"created_at": 1},
                        ttl("created_at_ttl", super::to_device::TO_DEVICE_RETENTION),
                    ),
                ],
            ),
            (
                collections::CODE_OUTBOX,
                vec![index(
                    doc! {"created_at": 1},
                    ttl("created_at_ttl", CODE_OUTBOX_RETENTION),
                )],
            ),
        ];
        for (collection, indexes) in plan {
            self.db
                .collection::<Document>(collection)
                .create_indexes(indexes)
                .await?;
        }
        self.ensure_message_ttl().await
    }

    async fn ensure_message_ttl(&self) -> Result<()> {
        let seconds = self.options.message_retention.as_secs() as i64;
        let model = index(
            doc! {"created_at": 1},
            IndexOptions::builder()
                .name(MESSAGE_TTL_INDEX.to_string())
                .expire_after(self.options.message_retention)
                .build(),
        );
        match self.messages().create_index(model).await {
            Ok(_) => Ok(()),
            // 85 IndexOptionsConflict / 86 IndexKeySpecsConflict: the index exists with another
            // expiry. Change it in place rather than failing the deployment.
            Err(e) if matches!(command_code(&e), Some(85) | Some(86)) => {
                self.db
                    .run_command(doc! {
                        "collMod": collections::MESSAGES,
                        "index": { "name": MESSAGE_TTL_INDEX, "expireAfterSeconds": seconds },
                    })
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn index(keys: Document, options: IndexOptions) -> IndexModel {
    IndexModel::builder().keys(keys).options(options).build()
}
