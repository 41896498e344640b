//! Configuration: missing and invalid values are named clearly; defaults apply otherwise.

use std::collections::HashMap;
use std::time::Duration;

use messaging::auth::JwtConfig;
use messaging::config::{
    BrokerConfig, ConfigError, GatewayConfig, MongoConfig, RedisConfig, S3Config,
};
use messaging::context::Settings;

fn source(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

#[test]
fn missing_values_name_the_variable() {
    let empty = source(&[]);
    assert_eq!(
        RedisConfig::from_source(&empty).unwrap_err(),
        ConfigError::Missing("REDIS_URL")
    );
    assert_eq!(
        MongoConfig::from_source(&empty).unwrap_err(),
        ConfigError::Missing("MONGODB_URI")
    );
    assert_eq!(
        GatewayConfig::from_source(&empty).unwrap_err(),
        ConfigError::Missing("WEBSOCKET_MANAGEMENT_ENDPOINT")
    );
    assert_eq!(
        BrokerConfig::from_source(&empty).unwrap_err(),
        ConfigError::Missing("BROKER_URL")
    );
    let err = JwtConfig::from_source(&empty).unwrap_err();
    assert!(
        err.to_string()
            .contains("JWT_HS256_SECRET or JWT_RS256_PUBLIC_KEY"),
        "{err}"
    );
    // Blank counts as missing.
    assert_eq!(
        RedisConfig::from_source(&source(&[("REDIS_URL", "  ")])).unwrap_err(),
        ConfigError::Missing("REDIS_URL")
    );
}

#[test]
fn invalid_values_say_why() {
    let err = RedisConfig::from_source(&source(&[("REDIS_URL", "localhost:6379")])).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                var: "REDIS_URL",
                ..
            }
        ),
        "{err}"
    );
    let err = MongoConfig::from_source(&source(&[
        ("MONGODB_URI", "mongodb://h/"),
        ("MESSAGE_RETENTION_DAYS", "ninety"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("MESSAGE_RETENTION_DAYS"), "{err}");
    let err = MongoConfig::from_source(&source(&[
        ("MONGODB_URI", "mongodb://h/"),
        ("MESSAGE_RETENTION_DAYS", "0"),
    ]))
    .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            var: "MESSAGE_RETENTION_DAYS",
            ..
        }
    ));
    let err = JwtConfig::from_source(&source(&[("JWT_HS256_SECRET", "short")])).unwrap_err();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    let err =
        JwtConfig::from_source(&source(&[("JWT_RS256_PUBLIC_KEY", "not a pem")])).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            var: "JWT_RS256_PUBLIC_KEY",
            ..
        }
    ));
    let err = S3Config::from_source(&source(&[("AWS_ENDPOINT_URL_S3", "minio:9000")])).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            var: "AWS_ENDPOINT_URL_S3",
            ..
        }
    ));
    let err = Settings::from_source(&source(&[("MAX_CONTENT_BYTES", "200000")])).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            var: "MAX_CONTENT_BYTES",
            ..
        }
    ));
}

#[test]
fn defaults_apply() {
    let redis = RedisConfig::from_source(&source(&[("REDIS_URL", "redis://h:6379/")])).unwrap();
    assert_eq!(redis.key_prefix, "msg:");
    let mongo = MongoConfig::from_source(&source(&[("MONGODB_URI", "mongodb+srv://c/")])).unwrap();
    assert_eq!(mongo.database, "messaging");
    assert_eq!(
        mongo.options.message_retention,
        Duration::from_secs(90 * 86_400)
    );
    let jwt = JwtConfig::from_source(&source(&[(
        "JWT_HS256_SECRET",
        "0123456789abcdef0123456789abcdef",
    )]))
    .unwrap();
    assert_eq!(
        (jwt.issuer.as_str(), jwt.audience.as_str()),
        ("messaging", "messaging-clients")
    );
    // The secret never shows in debug output.
    assert!(!format!("{jwt:?}").contains("0123456789abcdef"));
    let s3 = S3Config::from_source(&source(&[("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")]))
        .unwrap();
    assert!(s3.path_style, "custom endpoints default to path-style");
    let settings = Settings::from_source(&source(&[("SEND_RATE_PER_MINUTE", "5")])).unwrap();
    assert_eq!(settings.send_limit.max, 5);
    assert_eq!(settings.max_retransmit_range, 1000);
}
