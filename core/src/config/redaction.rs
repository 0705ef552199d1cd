//! What `Debug` (and so any log) shows of a secret in the configuration: that it is set, never
//! its value.

/// `"<redacted>"` for a secret that is set, `""` for one that is not.
pub fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

/// `url` (one URL or a comma-separated list) with the password of each URL replaced by `***`:
/// what logs and `Debug` show.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|node| {
            let Some((scheme, rest)) = node.split_once("://") else {
                return node.to_owned();
            };
            let Some((user_info, address)) = rest.rsplit_once('@') else {
                return node.to_owned();
            };
            match user_info.split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{address}"),
                None => node.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use crate::config::ChorusConfig;

    #[test]
    fn no_secret_of_the_configuration_shows_in_its_debug_output() {
        let mut config = ChorusConfig::default();
        config.auth.jwt_secret = "jwt-s3cret-0123456789".into();
        config.auth.api_key = "api-s3cret".into();
        config.redis.url = "redis://chorus:redis-s3cret@127.0.0.1:6379/0".into();
        config.redis.password = "redis-s3cret-2".into();
        config.clickhouse.url = "https://chorus:ch-s3cret@127.0.0.1:8443".into();
        config.clickhouse.password = "ch-s3cret-2".into();
        config.attachments.s3_secret_access_key = "s3-s3cret".into();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(r#"jwt_secret: "<redacted>""#), "{shown}");
        assert!(
            shown.contains("https://chorus:***@127.0.0.1:8443"),
            "{shown}"
        );
        let unset = format!("{:?}", ChorusConfig::default().auth);
        assert!(
            unset.contains(r#"api_key: """#),
            "unset is shown as unset: {unset}"
        );
    }
}
