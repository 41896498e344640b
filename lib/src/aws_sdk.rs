//! The AWS SDK's configuration (credentials, region, HTTP client), built for a fast cold start.
//!
//! The SDK's defaults are made for a laptop: they read `~/.aws/config` and `~/.aws/credentials`,
//! walk a chain of credential and region providers, and give every SDK client an HTTPS client
//! that loads the platform's root certificates (the bundle, then every file in
//! `/etc/ssl/certs`: the largest single cost of a function's start). Inside Lambda none of that
//! is needed: the runtime sets the region and the function's credentials in the environment, and
//! every AWS endpoint chains to Amazon Trust Services' roots. So there, [`sdk_config`] takes
//! both from the environment, reads no profile file, and builds one HTTPS client (shared by
//! every SDK client of the process) that trusts only those roots, compiled in. Anywhere else
//! (Knative, the local stack, a developer's machine) it loads the SDK's defaults, with the
//! region defaulting to `us-east-1` so the local stack needs no AWS setup.

use std::sync::OnceLock;

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// Amazon Trust Services' root certificates (PEM): what every AWS endpoint chains to.
pub const AMAZON_ROOTS_PEM: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// The SDK configuration for this process: from the environment alone inside Lambda (see the
/// module documentation), the SDK's defaults elsewhere.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let in_lambda = var("AWS_LAMBDA_FUNCTION_NAME").is_some();
    match (in_lambda, var("AWS_REGION"), var("AWS_ACCESS_KEY_ID")) {
        (true, Some(region), Some(_)) => loader
            .region(aws_config::Region::new(region))
            .credentials_provider(EnvironmentVariableCredentialsProvider::new())
            // Settings still come from the environment (AWS_ENDPOINT_URL_*, AWS_MAX_ATTEMPTS):
            // only the files are skipped.
            .profile_files(
                EnvConfigFiles::builder()
                    .with_contents(EnvConfigFileKind::Config, "")
                    .build(),
            )
            .http_client(amazon_https_client()),
        _ => loader.region(
            aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1"),
        ),
    }
    .load()
    .await
}

/// One HTTPS client for every SDK client of the process, trusting [`AMAZON_ROOTS_PEM`] only.
pub fn amazon_https_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let trust = TrustStore::empty().with_pem_certificate(AMAZON_ROOTS_PEM);
            let context = TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .expect("the compiled-in roots are valid PEM");
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context)
                .build_https()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_roots_are_amazon_trust_services() {
        let text = std::str::from_utf8(AMAZON_ROOTS_PEM).unwrap();
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 5);
        // Builds (the PEM parses) without touching the file system.
        let _ = amazon_https_client();
    }
}
