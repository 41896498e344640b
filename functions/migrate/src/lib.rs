//! The deploy-time migration: creates MongoDB's indexes and records the schema version
//! ([`messaging::store::MongoStore::migrate`]), so no function pays for it at a cold start.
//!
//! - **AWS**: the template's `SchemaMigration` custom resource invokes this function on every
//!   deployment that changes its properties (the schema version, the retention); the other
//!   functions depend on it. [`custom_resource`] answers CloudFormation at the request's
//!   `ResponseURL` whatever happens, within the function's timeout, so a failed migration fails
//!   the deployment (and rolls it back) instead of leaving it waiting for an hour. Deleting the
//!   stack deletes nothing: the data outlives it.
//! - **Kubernetes**: the `migrate` Job runs the binary once ([`run_once`]).
//! - **Locally**: the local stack migrates as it starts.

use std::time::Duration;

use aws_lambda_events::event::cloudformation::CloudFormationCustomResourceRequest;
use messaging::config::{MongoConfig, Source};
use messaging::store::{MongoStore, SchemaState};
use serde_json::{Value, json};

/// The physical id of the migration resource: one per database.
const PHYSICAL_ID_PREFIX: &str = "messaging-schema";

/// How long a migration may take (index builds on a large collection are slow); the template's
/// timeout for the function is longer, so CloudFormation always gets an answer.
pub const MIGRATION_DEADLINE: Duration = Duration::from_secs(240);

/// Migrates the database `src` configures (`MONGODB_URI`, `MONGODB_DATABASE`,
/// `MESSAGE_RETENTION_DAYS`, `MONGODB_TIMEOUT_MS`) within [`MIGRATION_DEADLINE`].
pub async fn migrate(src: &impl Source) -> anyhow::Result<(String, SchemaState)> {
    let mongo = MongoConfig::from_source(src)?;
    let work = async {
        let store = MongoStore::connect(&mongo.uri, &mongo.database, mongo.options).await?;
        let state = store.migrate().await?;
        anyhow::Ok(state)
    };
    let state = tokio::time::timeout(MIGRATION_DEADLINE, work)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the migration took longer than {} s",
                MIGRATION_DEADLINE.as_secs()
            )
        })??;
    Ok((mongo.database, state))
}

/// The Kubernetes Job (and any one-off run): migrates, logs what it recorded, and fails with
/// the reason otherwise.
pub async fn run_once(src: &impl Source) -> anyhow::Result<()> {
    let (database, state) = migrate(src).await?;
    tracing::info!(
        database,
        version = state.version,
        retention_secs = state.retention_secs,
        "schema migrated"
    );
    println!(
        "migrated database `{database}` to schema version {} (message retention {} s)",
        state.version, state.retention_secs
    );
    Ok(())
}

/// What CloudFormation is told about one request.
fn response(
    request: &CloudFormationCustomResourceRequest,
    outcome: Result<(String, Option<SchemaState>), String>,
) -> (String, Value) {
    let (url, request_id, stack_id, logical_id, physical_id) = match request {
        CloudFormationCustomResourceRequest::Create(r) => (
            &r.response_url,
            &r.request_id,
            &r.stack_id,
            &r.logical_resource_id,
            None,
        ),
        CloudFormationCustomResourceRequest::Update(r) => (
            &r.response_url,
            &r.request_id,
            &r.stack_id,
            &r.logical_resource_id,
            Some(&r.physical_resource_id),
        ),
        CloudFormationCustomResourceRequest::Delete(r) => (
            &r.response_url,
            &r.request_id,
            &r.stack_id,
            &r.logical_resource_id,
            Some(&r.physical_resource_id),
        ),
        _ => unreachable!("CloudFormation sends Create, Update or Delete"),
    };
    let mut body = json!({
        "RequestId": request_id,
        "StackId": stack_id,
        "LogicalResourceId": logical_id,
    });
    match outcome {
        Ok((database, state)) => {
            body["Status"] = "SUCCESS".into();
            body["PhysicalResourceId"] = format!("{PHYSICAL_ID_PREFIX}-{database}").into();
            if let Some(state) = state {
                body["Data"] = json!({
                    "SchemaVersion": state.version.to_string(),
                    "RetentionSeconds": state.retention_secs.to_string(),
                });
            }
        }
        Err(reason) => {
            body["Status"] = "FAILED".into();
            // A failed Create has no resource yet: any id will do, the stack rolls back.
            body["PhysicalResourceId"] = physical_id
                .cloned()
                .unwrap_or_else(|| format!("{PHYSICAL_ID_PREFIX}-failed"))
                .into();
            body["Reason"] = reason.into();
        }
    }
    (url.clone(), body)
}

/// Handles one custom resource request: Create and Update migrate, Delete keeps the data. The
/// answer goes to the request's presigned `ResponseURL` (a PUT without a content type, as
/// CloudFormation signs it); the returned value is what was sent.
pub async fn custom_resource(
    src: &impl Source,
    request: &CloudFormationCustomResourceRequest,
) -> anyhow::Result<Value> {
    let outcome = match request {
        CloudFormationCustomResourceRequest::Delete(_) => {
            let database = MongoConfig::from_source(src)
                .map(|m| m.database)
                .unwrap_or_default();
            Ok((database, None))
        }
        _ => match migrate(src).await {
            Ok((database, state)) => Ok((database, Some(state))),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "migration failed");
                Err(format!("{e:#}"))
            }
        },
    };
    let (url, body) = response(request, outcome);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let answer = client.put(&url).body(body.to_string()).send().await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "CloudFormation's response URL answered {}",
        answer.status()
    );
    Ok(body)
}
