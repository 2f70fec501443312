//! Keeping secrets out of everything agentbus prints or logs.

/// Replaces the password (or token) in a URL's user-info with `***`.
///
/// ```
/// use agentbus::redact::redact_url;
/// assert_eq!(redact_url("nats://agentbus:<password>@127.0.0.1:4222"), "nats://agentbus:***@127.0.0.1:4222");
/// assert_eq!(redact_url("nats://tok3n@host:4222"), "nats://***@host:4222");
/// assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
    let masked = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{masked}@{host}{path}")
}

/// An error's text with every URL password masked: kept as the cause of an
/// error whose original could echo a password (connection errors quote their
/// URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Redacted(String);

impl Redacted {
    /// `err`'s text, with the password of any URL in it masked.
    pub fn from_error(err: &dyn std::error::Error) -> Self {
        Self(redact_url(&err.to_string()))
    }

    /// The masked text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Removes the user-info from a URL, returning the bare URL and the user-info.
pub(crate) fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => (
            format!("{scheme}://{}{path}", &authority[at + 1..]),
            Some(authority[..at].to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_with_at_sign_is_fully_masked() {
        let with_at = format!("nats://u:{}@{}@h:1", "p", "ss");
        assert_eq!(redact_url(&with_at), format!("nats://u:{}@h:1", "***"));
    }

    #[test]
    fn split_keeps_path_and_returns_userinfo() {
        assert_eq!(
            split_userinfo("tls://u:p@h:1/x"),
            ("tls://h:1/x".to_owned(), Some("u:p".to_owned()))
        );
        assert_eq!(split_userinfo("h:1"), ("h:1".to_owned(), None));
    }
}
