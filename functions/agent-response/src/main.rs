//! Entry point of the agent-response function (`agent.response`, `agent.progress` and the
//! scheduled `messaging.agent.sweep`): under Lambda (EventBridge rules and schedule) or, when
//! `AWS_LAMBDA_RUNTIME_API` is not set, as an HTTP CloudEvents subscriber on `$PORT` (Knative).

fn main() -> Result<(), lambda_runtime::Error> {
    messaging::runtime::start(async {
        messaging::telemetry::init();
        let ctx = messaging::runtime::init(messaging::context::Context::from_env()).await;
        let dead_letters = ctx.store.clone();
        messaging::runtime::run_cloudevent_function("agent-response", dead_letters, move |event| {
            let ctx = ctx.clone();
            async move { fn_agent_response::handle(&ctx, event).await.map(|()| None) }
        })
        .await
    })
}
