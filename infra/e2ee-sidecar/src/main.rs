//! The E2EE sidecar's binary: configuration, the agent's device, the two listeners (see the
//! library's doc).
//!
//! `AGENT_ID`, `AGENT_TOKEN`, `API_URL` (and `AGENT_DEVICE_ID`, `AGENT_KEYS_FILE`,
//! `AGENT_KEYS_SECRET`) describe the agent's device; `AGENT_URL` is the agent's own
//! CloudEvents endpoint; `PORT` (8080) is where the broker delivers; `SIDECAR_PORT` (8081, on
//! 127.0.0.1) is what the agent uses as its `BROKER_URL`; `BROKER_URL` or `EVENT_BUS_NAME` is
//! where the sealed events go.

use anyhow::Context as _;
use e2ee_sidecar::Sidecar;
use messaging::e2ee::AgentDevice;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    messaging::telemetry::init();
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is required"));
    let agent_id = var("AGENT_ID")?;
    let agent_url = var("AGENT_URL")?;
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    let sidecar_port: u16 = std::env::var("SIDECAR_PORT")
        .unwrap_or_else(|_| "8081".into())
        .parse()?;
    let device = AgentDevice::from_env(&agent_id)
        .await?
        .context("AGENT_TOKEN is required: the sidecar holds the agent's keys")?;
    tracing::info!(
        agent = agent_id,
        device = device.device_id(),
        safety_code = device.safety_code().await,
        "agent device ready"
    );
    let publisher = messaging::eventbridge::publisher_from_env().await?;
    let sidecar = Sidecar::new(&agent_id, device, &agent_url, publisher);
    let inbound = messaging::runtime::listen(port).await?;
    let outbound = tokio::net::TcpListener::bind(("127.0.0.1", sidecar_port)).await?;
    let (a, b) = tokio::join!(
        messaging::runtime::serve(inbound, sidecar.inbound_router()),
        messaging::runtime::serve(outbound, sidecar.outbound_router()),
    );
    a?;
    b?;
    Ok(())
}
