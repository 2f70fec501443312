//! Where `llm_agent` sends prompts: an OpenAI-compatible chat-completions
//! endpoint, configured in code or from `LLM_BASE_URL`, `LLM_API_KEY` and
//! `LLM_MODEL`.

use agentbus::redact::redact_url;
use std::fmt;
use std::time::Duration;

/// Variable holding the endpoint's base URL, e.g. `https://api.openai.com/v1`.
pub const LLM_BASE_URL_VAR: &str = "LLM_BASE_URL";
/// Variable holding the API key, sent as `Authorization: Bearer <key>`.
pub const LLM_API_KEY_VAR: &str = "LLM_API_KEY";
/// Variable holding the model name.
pub const LLM_MODEL_VAR: &str = "LLM_MODEL";
/// The model asked for when `LLM_MODEL` is not set.
pub const DEFAULT_LLM_MODEL: &str = "gpt-4o-mini";
/// How long one call to the endpoint may take, body included; for a
/// streamed call, how long it may go without sending anything.
pub const DEFAULT_LLM_TIMEOUT: Duration = Duration::from_secs(20);

/// An OpenAI-compatible endpoint: `POST {base_url}/chat/completions`.
///
/// ```
/// use agentbus_demo::LlmEndpoint;
/// let endpoint = LlmEndpoint::new("http://127.0.0.1:8000/v1").unwrap().with_model("llama3");
/// assert_eq!(endpoint.completions_url().as_str(), "http://127.0.0.1:8000/v1/chat/completions");
/// ```
#[derive(Clone)]
pub struct LlmEndpoint {
    completions_url: reqwest::Url,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
}

/// Why the LLM agent cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmSetupError {
    /// The base URL is not an http(s) URL.
    #[error(
        "the LLM base URL {url:?} is not usable ({source}); set LLM_BASE_URL to an OpenAI-compatible base such as https://api.openai.com/v1"
    )]
    InvalidBaseUrl {
        /// The URL, with any password masked.
        url: String,
        /// Why it was refused.
        #[source]
        source: BaseUrlProblem,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client for the language model: {source}")]
    HttpClient {
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// Why the LLM agent cannot be set up, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LlmSetupErrorKind {
    /// `LLM_BASE_URL` (or the URL given) is not an http(s) base URL.
    InvalidBaseUrl,
    /// The HTTP client could not be built (no TLS backend, say).
    HttpClient,
}

impl LlmSetupError {
    /// Why the agent cannot be set up.
    pub fn kind(&self) -> LlmSetupErrorKind {
        match self {
            Self::InvalidBaseUrl { .. } => LlmSetupErrorKind::InvalidBaseUrl,
            Self::HttpClient { .. } => LlmSetupErrorKind::HttpClient,
        }
    }
}

/// What is wrong with a base URL (the cause of [`LlmSetupError::InvalidBaseUrl`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaseUrlProblem {
    /// It does not parse as a URL (the parser's messages quote no part of it).
    #[error("{0}")]
    Parse(#[source] url::ParseError),
    /// Its scheme is not `http` or `https`.
    #[error("the scheme is {scheme:?}, not http or https")]
    Scheme {
        /// The scheme it has.
        scheme: String,
    },
    /// It has no host.
    #[error("it has no host")]
    NoHost,
    /// It has a query or a fragment, which `/chat/completions` cannot follow.
    #[error("it has a query or fragment")]
    QueryOrFragment,
}

impl LlmEndpoint {
    /// An endpoint at `base_url` (the part before `/chat/completions`), with
    /// model [`DEFAULT_LLM_MODEL`], no API key and [`DEFAULT_LLM_TIMEOUT`].
    pub fn new(base_url: &str) -> Result<Self, LlmSetupError> {
        let invalid = |source| LlmSetupError::InvalidBaseUrl {
            url: redact_url(base_url),
            source,
        };
        let base = base_url.trim().trim_end_matches('/');
        // Checked before joining: "http://" + "/chat/completions" would parse with host "chat".
        let parsed =
            reqwest::Url::parse(base).map_err(|err| invalid(BaseUrlProblem::Parse(err)))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(BaseUrlProblem::Scheme {
                scheme: parsed.scheme().to_owned(),
            }));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(BaseUrlProblem::NoHost));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(BaseUrlProblem::QueryOrFragment));
        }
        let url = reqwest::Url::parse(&format!("{base}/chat/completions"))
            .map_err(|err| invalid(BaseUrlProblem::Parse(err)))?;
        Ok(Self {
            completions_url: url,
            api_key: None,
            model: DEFAULT_LLM_MODEL.to_owned(),
            timeout: DEFAULT_LLM_TIMEOUT,
        })
    }

    /// The endpoint configured by `LLM_BASE_URL`, `LLM_API_KEY` and
    /// `LLM_MODEL`; `None` when `LLM_BASE_URL` is unset or empty.
    pub fn from_env() -> Result<Option<Self>, LlmSetupError> {
        Self::from_env_with(|key| std::env::var(key).ok())
    }

    /// Like [`LlmEndpoint::from_env`], reading variables through `env`.
    pub fn from_env_with(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, LlmSetupError> {
        let value = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let Some(base_url) = value(LLM_BASE_URL_VAR) else {
            return Ok(None);
        };
        let mut endpoint = Self::new(&base_url)?;
        if let Some(key) = value(LLM_API_KEY_VAR) {
            endpoint = endpoint.with_api_key(key.trim());
        }
        if let Some(model) = value(LLM_MODEL_VAR) {
            endpoint = endpoint.with_model(model.trim());
        }
        Ok(Some(endpoint))
    }

    /// Sends `Authorization: Bearer <key>` with every call.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Asks for `model` instead of [`DEFAULT_LLM_MODEL`].
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Gives up on a call after `timeout`, or on a streamed call silent for
    /// `timeout` (answered as a `failed` task).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL posted to.
    pub fn completions_url(&self) -> &reqwest::Url {
        &self.completions_url
    }

    /// The model asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// How long one call may take (a streamed call: may stay silent).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether an API key is sent.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The URL posted to, safe to print (any password in it masked).
    pub fn display_url(&self) -> String {
        redact_url(self.completions_url.as_str())
    }

    /// The API key, for the `Authorization` header only.
    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Removes the API key from text that may echo it (error bodies, causes).
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "***"),
            _ => text.to_owned(),
        }
    }
}

impl fmt::Debug for LlmEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmEndpoint")
            .field("completions_url", &self.display_url())
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn endpoint_from_environment() {
        let vars: HashMap<&str, &str> = [
            (LLM_BASE_URL_VAR, "http://127.0.0.1:9/v1/"),
            (LLM_API_KEY_VAR, "sk-test"),
            (LLM_MODEL_VAR, "tiny"),
        ]
        .into();
        let endpoint = LlmEndpoint::from_env_with(|k| vars.get(k).map(|v| v.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(
            endpoint.completions_url().as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(endpoint.model(), "tiny");
        assert!(endpoint.has_api_key());
        assert!(!format!("{endpoint:?}").contains("sk-test"));
        assert!(
            LlmEndpoint::from_env_with(|k| (k == LLM_BASE_URL_VAR).then(String::new))
                .unwrap()
                .is_none()
        );
        let defaults = LlmEndpoint::from_env_with(|k| {
            (k == LLM_BASE_URL_VAR).then(|| "https://h/v1".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(defaults.model(), DEFAULT_LLM_MODEL);
        assert!(!defaults.has_api_key());
    }

    #[test]
    fn bad_base_urls_are_one_clear_error() {
        for bad in ["ftp://h/v1", "not a url", "http://", "http://h/v1?x=1"] {
            let err = LlmEndpoint::new(bad).unwrap_err();
            assert!(err.to_string().contains("set LLM_BASE_URL"), "{err}");
        }
        let err = LlmEndpoint::new("ftp://u:hunter2@h/v1").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn each_bad_base_url_says_what_is_wrong() {
        let problem = |url: &str| {
            let err = LlmEndpoint::new(url).unwrap_err();
            assert_eq!(err.kind(), LlmSetupErrorKind::InvalidBaseUrl, "{err}");
            match err {
                LlmSetupError::InvalidBaseUrl { source, .. } => source,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            problem("ftp://u:hunter2@h/v1"),
            BaseUrlProblem::Scheme {
                scheme: "ftp".into()
            }
        );
        assert_eq!(
            problem("not a url"),
            BaseUrlProblem::Parse(url::ParseError::RelativeUrlWithoutBase)
        );
        assert_eq!(
            problem("http://"),
            BaseUrlProblem::Parse(url::ParseError::EmptyHost)
        );
        assert_eq!(problem("http://h/v1#x"), BaseUrlProblem::QueryOrFragment);
    }
}
