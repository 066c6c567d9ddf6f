//! Login tokens: JWTs minted by the application's backend (HS256 or RS256), `sub` = user id,
//! `exp` required, `nbf` honoured and an `iat` in the future refused, all checked against the
//! injected clock. Also the one rule for user ids, and minting for `tidings token`.

use crate::clock::SharedClock;
use crate::config::Config;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Signature, algorithm, claims or user id are not acceptable.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
}

/// Configuration problems found when building the verifier or minting.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no login method configured: set jwt_hs256_secret or jwt_rs256_public_key (or insecure_dev for development)"
    )]
    NoMethod,
    #[error("reading key {0}: {1}")]
    Read(String, std::io::Error),
    #[error("bad key {0}: {1}")]
    Bad(String, jsonwebtoken::errors::Error),
    #[error("bad key {0}: not an RSA public key (RS256 needs one)")]
    NotRsa(String),
    #[error(
        "RSA key {0} is {1} bits; at least {MIN_RSA_BITS} are required (a shorter modulus can be \
         factored, and whoever does can sign tokens for anyone)"
    )]
    WeakRsa(String, usize),
    #[error("minting: {0}")]
    Mint(jsonwebtoken::errors::Error),
    #[error("no token minted for this user id: {0}")]
    User(UserIdError),
}

/// Why a user id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("a user id must be 1..={max} bytes; this one is {len}")]
    Length { len: usize, max: usize },
    #[error("a user id may not begin or end with white space")]
    Whitespace,
    #[error("a user id may not contain U+{:04X} (control, format, invisible and line or paragraph separator characters are refused)", *.0 as u32)]
    Character(char),
    #[error("a user id may not begin with the combining mark U+{:04X}", *.0 as u32)]
    CombiningStart(char),
    #[error("a user id may not contain '|' (it separates the parts of keys like p2p|user)")]
    Pipe,
}

/// The one rule for user ids, applied at login and wherever a request names a user: 1 to
/// `max_bytes` bytes of any characters except control characters (Unicode Cc), format
/// characters (Cf: bidi overrides and isolates, zero-width characters), default-ignorable
/// characters (variation selectors, Hangul fillers: invisible when shown), the line and
/// paragraph separators (Zl, Zp: U+2028, U+2029) and `|`, with no white space at either end and
/// no combining mark first. Every id Easemob, NetEase Yunxin and LeanCloud accept passes (README,
/// "User ids").
pub fn check_user_id(id: &str, max_bytes: usize) -> Result<(), UserIdError> {
    if id.is_empty() || id.len() > max_bytes {
        return Err(UserIdError::Length {
            len: id.len(),
            max: max_bytes,
        });
    }
    if id.starts_with(char::is_whitespace) || id.ends_with(char::is_whitespace) {
        return Err(UserIdError::Whitespace);
    }
    if let Some(c) = id.chars().next().filter(|&c| is_combining_mark(c)) {
        return Err(UserIdError::CombiningStart(c));
    }
    match id
        .chars()
        .find(|&c| c == '|' || refused_in_text(c) || is_format(c) || is_default_ignorable(c))
    {
        Some('|') => Err(UserIdError::Pipe),
        Some(c) => Err(UserIdError::Character(c)),
        None => Ok(()),
    }
}

/// A character text shown to other users may not hold (see [`check_text`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "may not contain U+{:04X} (control, bidi and other format characters, and line or paragraph \
     separators, are refused)",
    *.0 as u32
)]
pub struct TextError(pub char);

/// The one rule for text a client sets and other users are shown (conversation names, the keys
/// of conversation attributes and profile fields, profile display names and avatar URLs): no
/// control characters (Unicode Cc: NUL, CR/LF, ESC), no line or paragraph separators, and no
/// format characters (Cf: the bidi overrides, embeddings, isolates and marks, with which
/// `evil\u{202E}gnp.exe` shows as `evilexe.png`; zero-width spaces; the byte order mark),
/// save the zero-width joiner and non-joiner (U+200C, U+200D) and the tag characters
/// (U+E0020..U+E007F), which emoji sequences and some scripts need. User ids follow it and
/// more ([`check_user_id`]). Values (attribute values, profile field values, message content)
/// are the app's data and are not checked.
pub fn check_text(text: &str) -> Result<(), TextError> {
    match text.chars().find(|&c| refused_in_text(c)) {
        Some(c) => Err(TextError(c)),
        None => Ok(()),
    }
}

/// See [`check_text`].
fn refused_in_text(c: char) -> bool {
    (c.is_control() || is_separator(c) || is_format(c))
        && !matches!(c, '\u{200C}' | '\u{200D}' | '\u{E0020}'..='\u{E007F}')
}

/// Unicode general categories Zl and Zp: the line and paragraph separators U+2028 and U+2029,
/// which break lines in JavaScript and in some log viewers.
fn is_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15.1): characters
/// rendered as nothing, such as variation selectors (U+FE0F), the Hangul fillers (U+3164) and
/// the combining grapheme joiner, so `alice\u{FE0F}` would show as `alice`. Most format
/// characters are in it too; reserved code points of the property are included.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c as u32,
        0xAD | 0x34F
            | 0x61C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// The main blocks of combining marks (Unicode general category M): Combining Diacritical
/// Marks and their Extended, Supplement and For Symbols blocks, and the Combining Half Marks.
/// Hardcoded, since no dependency gives general categories, and not all of category M
/// (scripts' own vowel signs are marks too): these are the marks that stack on whatever
/// precedes them, so an id beginning with one would merge into the text shown before it.
fn is_combining_mark(c: char) -> bool {
    matches!(
        c as u32,
        0x300..=0x36F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F
    )
}

/// Unicode general category Cf (format characters), as of Unicode 15.1.
pub(crate) fn is_format(c: char) -> bool {
    matches!(
        c as u32,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    /// Not before (seconds); checked with the leeway, like `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    /// Issued at (seconds): what a revocation of the user's tokens compares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    /// The token's id: what a revocation of one token names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// Whom a verified token names, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`).
    pub user: String,
    /// The first millisecond (on the server's clock) at which this token counts as expired:
    /// `exp` plus `jwt_leeway_secs`. `None` only for a bare user id in `insecure_dev` mode,
    /// which never expires.
    pub expires_at_ms: Option<i64>,
    /// When it was issued (`iat`, ms), if it says.
    pub issued_at_ms: Option<i64>,
    /// Its id (`jti`), if it has one.
    pub jti: Option<String>,
}

/// Verifies login tokens.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    insecure_dev: bool,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_ms: i64,
    max_user_id_bytes: usize,
    clock: SharedClock,
}

impl Authenticator {
    /// Builds the verifier from the configuration.
    pub fn new(config: &Config, clock: SharedClock) -> Result<Self, KeyError> {
        let hs256 = config
            .jwt_hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let rs256 = match &config.jwt_rs256_public_key {
            Some(path) => {
                let name = || path.display().to_string();
                let pem = std::fs::read(path).map_err(|e| KeyError::Read(name(), e))?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| KeyError::Bad(name(), e))?;
                // What the key verifies with, whichever PEM held it: PKCS#1 DER.
                let bits = key
                    .try_get_as_bytes()
                    .ok()
                    .and_then(rsa_modulus_bits)
                    .ok_or_else(|| KeyError::NotRsa(name()))?;
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::WeakRsa(name(), bits));
                }
                Some(key)
            }
            None => None,
        };
        if hs256.is_none() && rs256.is_none() && !config.insecure_dev {
            return Err(KeyError::NoMethod);
        }
        Ok(Authenticator {
            hs256,
            rs256,
            insecure_dev: config.insecure_dev,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_ms: config.jwt_leeway_secs as i64 * 1000,
            max_user_id_bytes: config.max_user_id_bytes,
            clock,
        })
    }

    /// Returns the user id the token names.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        self.identify(token).map(|i| i.user)
    }

    /// Verifies a token (signature, algorithm, `crit`, `iss`/`aud`, `exp`, `nbf`, `iat`, `sub`)
    /// and returns whom it names and until when. The one check for logins and token refreshes.
    pub fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token);
        if self.insecure_dev && header.is_err() {
            // Development mode: a bare user id logs in as that user, with no deadline.
            return Ok(Identity {
                user: self.check_user(token.to_owned())?,
                expires_at_ms: None,
                issued_at_ms: None,
                jti: None,
            });
        }
        let header = header.map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.crit.is_some() {
            // RFC 7515 4.1.11: a recipient must refuse extensions it does not understand, and
            // this server understands none.
            return Err(AuthError::Invalid(
                "the crit header is not supported".into(),
            ));
        }
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)))?;
        let mut v = Validation::new(header.alg);
        // exp is checked below against the injected clock; aud/iss by hand for clear messages.
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        if let Some(iss) = &self.issuer
            && claims.iss.as_deref() != Some(iss.as_str())
        {
            return Err(AuthError::Invalid("issuer does not match".into()));
        }
        if let Some(aud) = &self.audience
            && claims.aud.as_deref() != Some(aud.as_str())
        {
            return Err(AuthError::Invalid("audience does not match".into()));
        }
        let now = self.clock.now_ms();
        let expires_at_ms = claims
            .exp
            .saturating_mul(1000)
            .saturating_add(self.leeway_ms);
        if expires_at_ms <= now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && nbf.saturating_mul(1000).saturating_sub(self.leeway_ms) > now
        {
            return Err(AuthError::Invalid("token not valid yet (nbf)".into()));
        }
        // Revoking a user's tokens compares `iat` with the revocation time, so a token claiming
        // to be issued later would outlive it: an `iat` beyond the leeway is refused.
        if let Some(iat) = claims.iat
            && iat.saturating_mul(1000).saturating_sub(self.leeway_ms) > now
        {
            return Err(AuthError::Invalid(
                "token issued in the future (iat)".into(),
            ));
        }
        Ok(Identity {
            user: self.check_user(claims.sub)?,
            expires_at_ms: Some(expires_at_ms),
            issued_at_ms: claims.iat.map(|t| t.saturating_mul(1000)),
            jti: claims.jti,
        })
    }

    fn check_user(&self, sub: String) -> Result<String, AuthError> {
        check_user_id(&sub, self.max_user_id_bytes)
            .map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        Ok(sub)
    }
}

/// Least RSA modulus an RS256 public key may have, bits (NIST SP 800-57: 2048 bits from 2015 on;
/// a 512-bit modulus is factored in hours on rented machines).
pub const MIN_RSA_BITS: usize = 2048;

/// The size in bits of the modulus of an RSA public key in PKCS#1 DER, `RSAPublicKey ::=
/// SEQUENCE { modulus INTEGER, publicExponent INTEGER }`: what jsonwebtoken makes of a PEM
/// `RSA PUBLIC KEY` (PKCS#1), `PUBLIC KEY` (SPKI, the bit string inside) or `CERTIFICATE` (its
/// subject's key) alike. `None` when the bytes are not that.
pub fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    /// One DER element at the start of `b`: its tag, contents and what follows it.
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            // Long form: the low bits say how many length bytes follow (at most 4 here).
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    let (SEQUENCE, body, []) = element(der)? else {
        return None;
    };
    let (INTEGER, modulus, rest) = element(body)? else {
        return None;
    };
    let (INTEGER, _exponent, []) = element(rest)? else {
        return None;
    };
    // A positive INTEGER may begin with zero bytes (one, when its top bit is set).
    let modulus = &modulus[modulus.iter().position(|&b| b != 0)?..];
    Some(modulus.len() * 8 - modulus[0].leading_zeros() as usize)
}

/// A new HS256 secret: 32 bytes from the kernel's random source, as 64 hex digits.
pub fn new_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Mints a token for `user` valid for `ttl_secs` from `now_ms`, with RS256 when a private key
/// is configured and `rs256` is asked for, HS256 otherwise. A user id that could not log in
/// is refused.
pub fn mint(
    config: &Config,
    user: &str,
    ttl_secs: i64,
    now_ms: i64,
    rs256: bool,
) -> Result<String, KeyError> {
    mint_with_id(config, user, ttl_secs, now_ms, rs256).map(|(token, _)| token)
}

/// [`mint`], also returning the token's id (`jti`, 32 random hex digits), by which the
/// token alone can be revoked. Minted tokens carry `iat` too.
pub fn mint_with_id(
    config: &Config,
    user: &str,
    ttl_secs: i64,
    now_ms: i64,
    rs256: bool,
) -> Result<(String, String), KeyError> {
    check_user_id(user, config.max_user_id_bytes).map_err(KeyError::User)?;
    let jti = {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| KeyError::Read("/dev/urandom".into(), e))?;
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let claims = Claims {
        sub: user.to_owned(),
        exp: now_ms / 1000 + ttl_secs,
        nbf: None,
        iss: config.jwt_issuer.clone(),
        aud: config.jwt_audience.clone(),
        iat: Some(now_ms / 1000),
        jti: Some(jti.clone()),
    };
    let (alg, key) = if rs256 {
        let path = config
            .jwt_rs256_private_key
            .as_ref()
            .ok_or(KeyError::NoMethod)?;
        let pem = std::fs::read(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?;
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem)
                .map_err(|e| KeyError::Bad(path.display().to_string(), e))?,
        )
    } else {
        let secret = config.jwt_hs256_secret.as_ref().ok_or(KeyError::NoMethod)?;
        (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        )
    };
    let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(KeyError::Mint)?;
    Ok((token, jti))
}
