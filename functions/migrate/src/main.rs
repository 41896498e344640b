//! Entry point of the schema migration: under Lambda, CloudFormation's custom resource
//! (`SchemaMigration` in `infra/aws/template.yaml`); otherwise one run and exit (the Kubernetes
//! `migrate` Job).

use messaging::config::Env;

fn main() -> anyhow::Result<()> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        match messaging::runtime::mode()? {
            messaging::runtime::Mode::Lambda => lambda_runtime::run(lambda_runtime::service_fn(
                |event: lambda_runtime::LambdaEvent<
                    aws_lambda_events::event::cloudformation::CloudFormationCustomResourceRequest,
                >| async move {
                    fn_migrate::custom_resource(&Env, &event.payload)
                        .await
                        .map_err(|e| lambda_runtime::Diagnostic {
                            error_type: "migration_unanswered".into(),
                            error_message: format!("{e:#}"),
                        })
                },
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{e}")),
            messaging::runtime::Mode::Http(_) => fn_migrate::run_once(&Env).await,
        }
    })
}
