//! Where a RequestAuthentication rule's keys come from, as the validator, the compiler and the
//! operator's fetcher all read it: inline `jwks`, a `jwksUri` the operator fetches, or — with
//! neither, as Istio does — the issuer's OpenID Connect discovery document
//! (`<issuer>/.well-known/openid-configuration`), whose `jwks_uri` the operator then fetches.
//!
//! The operator keeps every fetched key set under one string, its [`KeySource::fetch_key`]: the
//! `jwksUri` itself, or the discovery document's URL with [`DISCOVERY_FRAGMENT`] appended (a
//! fragment is never sent and never shown, and it keeps a discovered key set apart from a
//! `jwksUri` that names the same URL).

use super::{JwtRule, parse_jwks_uri};

/// Appended to a discovery document's URL to make the key it is kept under.
pub const DISCOVERY_FRAGMENT: &str = "#trellis-oidc-discovery";
/// Where OpenID Connect discovery puts an issuer's configuration, under the issuer's URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Where a rule's keys come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The key set written in the rule (`jwks`).
    Inline(&'a str),
    /// The key set at `jwksUri`, fetched by the operator.
    Uri(&'a str),
    /// Neither: discovered from the issuer (an `http(s)://` URL) by OpenID Connect.
    Discovery {
        /// The rule's issuer.
        issuer: &'a str,
    },
    /// Neither, and the issuer is no URL to discover from (the validator refuses this).
    Missing,
}

impl<'a> KeySource<'a> {
    /// The source of `rule`'s keys.
    pub fn of(rule: &'a JwtRule) -> Self {
        match (&rule.jwks, &rule.jwks_uri) {
            (Some(inline), _) => KeySource::Inline(inline),
            (None, Some(uri)) => KeySource::Uri(uri),
            (None, None) if discoverable(&rule.issuer).is_ok() => KeySource::Discovery { issuer: &rule.issuer },
            (None, None) => KeySource::Missing,
        }
    }

    /// What the operator fetches and keeps the key set under; `None` for inline or missing keys.
    pub fn fetch_key(&self) -> Option<String> {
        match self {
            KeySource::Uri(uri) => Some((*uri).to_string()),
            KeySource::Discovery { issuer } => Some(format!("{}{DISCOVERY_FRAGMENT}", discovery_document(issuer))),
            KeySource::Inline(_) | KeySource::Missing => None,
        }
    }

    /// The field that names the source, under the rule's path: `jwks`, `jwksUri` or `issuer`.
    pub fn field(&self) -> &'static str {
        match self {
            KeySource::Inline(_) => "jwks",
            KeySource::Uri(_) => "jwksUri",
            KeySource::Discovery { .. } | KeySource::Missing => "issuer",
        }
    }
}

/// The URL of `issuer`'s discovery document.
pub fn discovery_document(issuer: &str) -> String {
    format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'))
}

/// The issuer a fetch key stands for, when it is a discovery key.
pub fn discovered_issuer(fetch_key: &str) -> Option<&str> {
    fetch_key.strip_suffix(DISCOVERY_FRAGMENT)?.strip_suffix(DISCOVERY_PATH)
}

/// Whether keys can be discovered from `issuer`: an absolute `https://` (or `http://`) URL
/// naming a host, with no query or fragment (OpenID Connect's rule for issuers). The error
/// completes a sentence about the issuer.
pub fn discoverable(issuer: &str) -> Result<(), String> {
    parse_jwks_uri(issuer)?;
    if issuer.contains(['?', '#']) {
        return Err("has a query or fragment, which an OpenID Connect issuer never has".into());
    }
    Ok(())
}

/// Read an OpenID Connect discovery document fetched for `issuer`: its `jwks_uri`, checked as a
/// `jwksUri` is. The document must name the same issuer when it names one (OpenID Connect
/// Discovery §4.3: a document for another issuer is not to be trusted); a trailing `/` aside.
pub fn jwks_uri_from_discovery(issuer: &str, document: &str) -> Result<String, String> {
    let doc: serde_json::Value = serde_json::from_str(document)
        .map_err(|e| format!("the discovery document is not JSON ({e}); is the issuer an OpenID Connect provider?"))?;
    if !doc.is_object() {
        return Err("the discovery document is not a JSON object".into());
    }
    if let Some(named) = doc.get("issuer") {
        let same = named
            .as_str()
            .is_some_and(|n| n.trim_end_matches('/') == issuer.trim_end_matches('/'));
        if !same {
            return Err(format!(
                "the discovery document is for issuer {named}, not {issuer:?}; write the issuer exactly as the provider names it, or set jwksUri"
            ));
        }
    }
    let Some(uri) = doc.get("jwks_uri").and_then(|u| u.as_str()) else {
        return Err("the discovery document names no jwks_uri; set jwksUri in the rule".into());
    };
    parse_jwks_uri(uri).map_err(|why| {
        format!(
            "the discovery document's jwks_uri {:?} {why}",
            super::jwks_uri_for_display(uri)
        )
    })?;
    Ok(uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(issuer: &str, jwks_uri: Option<&str>, jwks: Option<&str>) -> JwtRule {
        JwtRule {
            issuer: issuer.into(),
            jwks_uri: jwks_uri.map(Into::into),
            jwks: jwks.map(Into::into),
            ..JwtRule::default()
        }
    }

    #[test]
    fn the_source_of_a_rules_keys_and_the_key_it_is_fetched_under() {
        let inline = rule("https://idp.example", Some("https://x/keys"), Some("{}"));
        assert_eq!(KeySource::of(&inline), KeySource::Inline("{}"));
        assert_eq!(KeySource::of(&inline).fetch_key(), None);
        let uri = rule("https://idp.example", Some("https://x/keys"), None);
        assert_eq!(KeySource::of(&uri).fetch_key().as_deref(), Some("https://x/keys"));
        assert_eq!(KeySource::of(&uri).field(), "jwksUri");
        let discovered = rule("https://idp.example/realms/shop/", None, None);
        let key = KeySource::of(&discovered).fetch_key().unwrap();
        assert_eq!(
            key,
            "https://idp.example/realms/shop/.well-known/openid-configuration#trellis-oidc-discovery"
        );
        assert_eq!(discovered_issuer(&key), Some("https://idp.example/realms/shop"));
        assert_eq!(
            super::super::jwks_uri_for_display(&key),
            "https://idp.example/realms/shop/.well-known/openid-configuration"
        );
        assert_eq!(KeySource::of(&discovered).field(), "issuer");
        assert_eq!(
            discovered_issuer("https://idp.example/.well-known/openid-configuration"),
            None
        );
        for not_a_url in [
            "testing@secure.istio.io",
            "https://idp.example/?tenant=a",
            "ftp://idp.example",
        ] {
            assert_eq!(
                KeySource::of(&rule(not_a_url, None, None)),
                KeySource::Missing,
                "{not_a_url}"
            );
        }
    }

    #[test]
    fn a_discovery_document_gives_its_jwks_uri_for_the_same_issuer_only() {
        let doc = |issuer: &str, jwks: &str| format!(r#"{{"issuer":"{issuer}","jwks_uri":"{jwks}"}}"#);
        assert_eq!(
            jwks_uri_from_discovery(
                "https://idp.example/",
                &doc("https://idp.example", "https://idp.example/certs")
            ),
            Ok("https://idp.example/certs".to_string())
        );
        assert_eq!(
            jwks_uri_from_discovery("https://idp.example", r#"{"jwks_uri":"http://keys.idp.svc:8080/jwks"}"#),
            Ok("http://keys.idp.svc:8080/jwks".to_string())
        );
        for (issuer, document, why) in [
            ("https://idp.example", "<html>login</html>".to_string(), "not JSON"),
            ("https://idp.example", "[]".to_string(), "not a JSON object"),
            (
                "https://idp.example",
                doc("https://evil.example", "https://evil.example/k"),
                "for issuer \"https://evil.example\"",
            ),
            (
                "https://idp.example",
                r#"{"issuer":"https://idp.example"}"#.to_string(),
                "names no jwks_uri",
            ),
            (
                "https://idp.example",
                doc("https://idp.example", "ftp://idp.example/k"),
                "scheme \"ftp\"",
            ),
            (
                "https://idp.example",
                doc("https://idp.example", "https://u:p@idp.example/k?key=s3cret"),
                "credentials",
            ),
        ] {
            let e = jwks_uri_from_discovery(issuer, &document).expect_err(&document);
            assert!(e.contains(why), "{document}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
