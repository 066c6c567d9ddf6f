//! LeanCloud's signatures: `hex(HMAC-SHA1(key, message))` over the documented strings (the
//! master key signed them at LeanCloud; here `leancloud_master_key` does). Exposed so app
//! backends and tests written in Rust sign the way their SDKs' signature factories must.

/// HMAC-SHA1 (RFC 2104), over the one SHA-1 in the dependency tree.
pub fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha1::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signature of `session/open`: over `appid:clientid::timestamp:nonce`.
pub fn login_signature(key: &str, app_id: &str, client_id: &str, t: i64, nonce: &str) -> String {
    let message = format!("{app_id}:{client_id}::{t}:{nonce}");
    hex(&hmac_sha1(key.as_bytes(), message.as_bytes()))
}

/// The signature of `conv/start` (`action` `None`: over
/// `appid:clientid:sorted_member_ids:timestamp:nonce`) and of `conv/add`/`conv/remove`
/// (`invite`/`kick`: over `appid:clientid:convid:sorted_member_ids:timestamp:nonce:action`).
/// `members` are sorted here and joined with `:`.
pub fn conversation_signature(
    key: &str,
    app_id: &str,
    client_id: &str,
    conv_and_action: Option<(&str, &str)>,
    members: &[&str],
    t: i64,
    nonce: &str,
) -> String {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    let members = sorted.join(":");
    let message = match conv_and_action {
        None => format!("{app_id}:{client_id}:{members}:{t}:{nonce}"),
        Some((conv, action)) => {
            format!("{app_id}:{client_id}:{conv}:{members}:{t}:{nonce}:{action}")
        }
    };
    hex(&hmac_sha1(key.as_bytes(), message.as_bytes()))
}

/// Compares without stopping at the first difference.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // Test cases 1 and 6 of RFC 2202 (short key; key longer than a block).
        assert_eq!(
            hex(&hmac_sha1(&[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            hex(&hmac_sha1(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }
}
