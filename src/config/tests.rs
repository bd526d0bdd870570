use super::*;

#[test]
fn debug_output_of_the_config_and_its_raw_layers_holds_no_secret() {
    let secrets = [
        "redis-pass-4b1c",
        "dv_api_key_7e2a",
        "dv_named_key_9f3d",
        "admin-token-0c5e-0123456789abcdef0123456789",
        "whsec_env_secret_61aa",
    ];
    let pairs = [
        (
            "CASEGATE_BUFFER__REDIS_URL",
            "redis://:redis-pass-4b1c@10.0.0.1:6380/2",
        ),
        ("CASEGATE_DUVO__API_KEY", secrets[1]),
        ("CASEGATE_DUVO__API_KEYS__SUPPORT", secrets[2]),
        ("CASEGATE_ADMIN__TOKEN", secrets[3]),
        ("STRIPE_WEBHOOK_SECRET", secrets[4]),
    ];
    let env = Env::from_pairs(pairs);
    let raw = Config::load_raw(None, &env, &Overrides::default()).unwrap();
    let config = Config::load(None, &env, &Overrides::default()).unwrap();
    for (what, dump) in [
        ("Config", format!("{config:?}")),
        ("Config (pretty)", format!("{config:#?}")),
        ("raw config", format!("{raw:?}")),
        ("environment", format!("{:?}", config.env)),
    ] {
        for secret in secrets {
            assert!(!dump.contains(secret), "{what} shows {secret}: {dump}");
        }
        assert!(!dump.contains("redis-pass"), "{what}: {dump}");
    }
    // What is not secret still shows, so the dumps stay useful.
    assert!(format!("{config:?}").contains("STRIPE_WEBHOOK_SECRET"));
    assert!(format!("{raw:?}").contains("SUPPORT") || format!("{raw:?}").contains("support"));
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(
        None,
        &Env::from_pairs(pairs.iter().copied()),
        &Overrides::default(),
    )
}

#[test]
fn defaults_match_the_shipped_file() {
    let config = load_env(&[]).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.mappings, PathBuf::from("mappings"));
    assert_eq!(config.ingress.max_body_bytes, 5 * 1024 * 1024);
    assert_eq!(config.ingress.dedupe_ttl, Duration::from_secs(86_400));
    assert_eq!(config.buffer.backend, BufferBackendKind::Embedded);
    // What `EmbeddedBuffer::open` uses without a configuration.
    assert_eq!(
        config.buffer.dedupe_index_marks,
        crate::buffer::DEFAULT_DEDUPE_INDEX_MARKS
    );
    assert_eq!(config.duvo.base_url, "https://api.duvo.ai/v2");
    assert!(config.duvo.api_key.is_none());
    assert!(config.admin_token.is_none());
}

#[test]
fn the_documented_environment_variables_override_settings() {
    let config = load_env(&[
        ("CASEGATE_LISTEN", "0.0.0.0:9000"),
        ("CASEGATE_MAPPINGS", "/etc/casegate/mappings"),
        ("CASEGATE_BUFFER__BACKEND", "redis"),
        ("CASEGATE_BUFFER__REDIS_URL", "redis://:pw@10.0.0.1:6380/2"),
        ("CASEGATE_BUFFER__PATH", "/var/lib/casegate/buf.redb"),
        ("CASEGATE_DUVO__BASE_URL", "http://127.0.0.1:7000/v1/"),
        ("CASEGATE_DUVO__API_KEY", "dv_secret"),
        ("CASEGATE_ADMIN__TOKEN", "admin-secret-0123456789abcdef0123"),
        ("CASEGATE_INGRESS__MAX_BODY_BYTES", "1024"),
    ])
    .unwrap();
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.mappings, PathBuf::from("/etc/casegate/mappings"));
    assert_eq!(config.buffer.backend, BufferBackendKind::Redis);
    assert_eq!(
        config.buffer.redis_url.expose(),
        "redis://:pw@10.0.0.1:6380/2"
    );
    assert_eq!(
        config.buffer.path,
        PathBuf::from("/var/lib/casegate/buf.redb")
    );
    assert_eq!(config.duvo.base_url, "http://127.0.0.1:7000/v1");
    assert_eq!(config.duvo.api_key.as_ref().unwrap().expose(), "dv_secret");
    assert_eq!(
        config.admin_token.as_ref().unwrap().expose(),
        "admin-secret-0123456789abcdef0123"
    );
    assert_eq!(config.ingress.max_body_bytes, 1024);
}

#[test]
fn an_unknown_environment_key_is_an_error_naming_it() {
    let error = load_env(&[("CASEGATE_BUFFER__BACKEDN", "redis")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("CASEGATE_BUFFER__BACKEDN"), "{error}");
    for name in ["CASEGATE_FOO", "CASEGATE_LISTEN__PORT", "CASEGATE_DUVO"] {
        let error = load_env(&[(name, "x")]).unwrap_err().to_string();
        assert!(
            error.contains(&format!("unknown environment variable {name}")),
            "{error}"
        );
        assert!(!error.contains("unknown field"), "{error}");
    }
    // The named-key map takes any key.
    let config = load_env(&[("CASEGATE_DUVO__API_KEYS__EU", "dv_eu")]).unwrap();
    assert!(config.duvo.api_keys.contains_key("eu"));
}

#[test]
fn an_unknown_file_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("casegate.toml");
    std::fs::write(&file, "[buffer]\nbackend = \"redis\"\nretries = 3\n").unwrap();
    let error = Config::load(Some(&file), &Env::default(), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("retries"), "{error}");
}

#[test]
fn invalid_values_name_their_key_and_never_echo_a_redis_password() {
    let cases = [
        ("CASEGATE_BUFFER__BACKEND", "postgres", "buffer.backend"),
        ("CASEGATE_LISTEN", "nowhere", "listen"),
        ("CASEGATE_LOG__FORMAT", "xml", "log.format"),
        (
            "CASEGATE_BUFFER__REDIS_URL",
            "http://:hunter2@host",
            "buffer.redis_url",
        ),
        ("CASEGATE_DUVO__BASE_URL", "api.duvo.ai", "duvo.base_url"),
        ("CASEGATE_PUBLIC_URL", "hooks.example.com", "public_url"),
    ];
    for (key, value, named) in cases {
        let error = load_env(&[(key, value)]).unwrap_err().to_string();
        assert!(error.contains(named), "{key}={value}: {error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn a_short_admin_token_is_an_error_that_does_not_echo_it() {
    let error = load_env(&[("CASEGATE_ADMIN__TOKEN", "short-token-hunter2")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("admin.token"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    let long = "x".repeat(MIN_ADMIN_TOKEN_CHARS);
    assert!(load_env(&[("CASEGATE_ADMIN__TOKEN", long.as_str())]).is_ok());
}

#[test]
fn trusted_proxies_are_addresses_or_cidr_blocks() {
    assert!(load_env(&[]).unwrap().ingress.trusted_proxies.is_empty());
    let config =
        load_env(&[("CASEGATE_INGRESS__TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).unwrap();
    assert_eq!(config.ingress.trusted_proxies.len(), 2);
    assert!(load_env(&[("CASEGATE_INGRESS__TRUSTED_PROXIES", "nowhere")]).is_err());
    let range = IpRange::parse("10.0.0.0/8").unwrap();
    assert!(range.contains("10.1.2.3".parse().unwrap()));
    assert!(range.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!range.contains("11.0.0.1".parse().unwrap()));
    let one = IpRange::parse("127.0.0.1").unwrap();
    assert!(one.contains("127.0.0.1".parse().unwrap()));
    assert!(!one.contains("127.0.0.2".parse().unwrap()));
    assert!(
        IpRange::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert!(
        IpRange::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap())
    );
    for bad in ["10.0.0.0/33", "nowhere", "10.0.0.0/x"] {
        assert!(IpRange::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn command_line_overrides_win_over_the_environment() {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        mappings: Some("m".into()),
        ..Overrides::default()
    };
    let env = Env::from_pairs([("CASEGATE_LISTEN", "0.0.0.0:9000")]);
    let config = Config::load(None, &env, &overrides).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:0");
    assert_eq!(config.mappings, PathBuf::from("m"));
}

#[test]
fn a_missing_config_file_is_an_error() {
    let error = Config::load(
        Some(Path::new("/nonexistent/casegate.toml")),
        &Env::default(),
        &Overrides::default(),
    );
    assert!(error.unwrap_err().to_string().contains("does not exist"));
}
