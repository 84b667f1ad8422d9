//! Who may use the review page, and how a relabelling request proves it
//! came from the page itself.
//!
//! * **Access tokens** (`--token-file`): lines `NAME:TOKEN` (`#` comments,
//!   blank lines ignored; a token of at least 16 characters). A browser
//!   presents one once as `/?token=TOKEN` and gets it back as an HttpOnly,
//!   SameSite=Strict cookie; scripts send `Authorization: Bearer TOKEN`.
//!   Tokens are compared as SHA-256 digests in constant time, against every
//!   configured token, so neither the length nor the first wrong byte of a
//!   guess shows in the response time.
//! * **Host check** on a loopback address: the `Host` header must name the
//!   server (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`), so that a
//!   web page whose DNS name is rebound to 127.0.0.1 cannot use the page.
//! * **CSRF**: a POST needs the header `X-CSRF-Token` with the server's
//!   random per-start token (which only a same-origin page can read from
//!   `/api/meta`), `Content-Type: application/json` (which a cross-site form
//!   cannot send), and, if the browser sends `Origin`, the server's own.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

pub const COOKIE: &str = "gcm_review_token";
pub const CSRF_HEADER: &str = "x-csrf-token";
const MIN_TOKEN_CHARS: usize = 16;

/// The configured access tokens, by reviewer name.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Equal in time that depends on neither value.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Tokens {
    /// Reads a token file (see the module docs).
    pub fn read(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::config(path, format!("line {}: {why}", i + 1));
            let (name, token) = line
                .split_once(':')
                .ok_or_else(|| bad("expected NAME:TOKEN"))?;
            let (name, token) = (name.trim(), token.trim());
            if name.is_empty() {
                return Err(bad("the reviewer name before ':' is empty"));
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(bad(&format!(
                    "the token is shorter than {MIN_TOKEN_CHARS} characters"
                )));
            }
            entries.push((name.to_string(), digest(token.as_bytes())));
        }
        if entries.is_empty() {
            return Err(Error::config(path, "no NAME:TOKEN line"));
        }
        Ok(Tokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The reviewer name of `token`, comparing against every entry.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        let d = digest(token.as_bytes());
        let mut found = None;
        for (name, t) in &self.entries {
            if ct_eq(&d, t) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// A random token for this server's start (hex of 32 bytes of the kernel's
/// randomness).
pub fn random_token() -> Result<String> {
    let path = Path::new("/dev/urandom");
    let mut b = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .at(path)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The token of a request: `Authorization: Bearer`, else the cookie.
pub fn presented<'a>(authorization: Option<&'a str>, cookie: Option<&'a str>) -> Option<&'a str> {
    if let Some(t) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return Some(t.trim());
    }
    cookie?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// A CSRF token check in constant time.
pub fn csrf_ok(expected: &str, got: Option<&str>) -> bool {
    got.is_some_and(|g| ct_eq(&digest(expected.as_bytes()), &digest(g.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_reviewers_and_bad_lines_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens");
        std::fs::write(
            &p,
            "# reviewers\nana: 0123456789abcdef0\n\nbo:fedcba98765432100\n",
        )
        .unwrap();
        let t = Tokens::read(&p).unwrap();
        assert_eq!(t.name_of("0123456789abcdef0"), Some("ana"));
        assert_eq!(t.name_of("fedcba98765432100"), Some("bo"));
        assert_eq!(t.name_of("0123456789abcdef"), None);
        assert_eq!(t.name_of(""), None);
        std::fs::write(&p, "ana:short\n").unwrap();
        let e = Tokens::read(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("shorter"), "{e}");
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(Tokens::read(&p).is_err());
    }

    #[test]
    fn presented_token_and_csrf() {
        assert_eq!(presented(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(
            presented(None, Some("x=1; gcm_review_token=tok; y=2")),
            Some("tok")
        );
        assert_eq!(presented(None, Some("x=1")), None);
        assert!(csrf_ok("abc", Some("abc")));
        assert!(!csrf_ok("abc", Some("abd")) && !csrf_ok("abc", None));
        assert_eq!(random_token().unwrap().len(), 64);
    }
}
