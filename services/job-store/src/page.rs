//! Opaque page tokens of ListJobs: the last id of the page and a fingerprint of the
//! filters, so that a token used with other filters is refused instead of
//! returning a wrong page.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::Error;

fn invalid(reason: &str) -> Error {
    Error::InvalidArgument {
        field: "page_token",
        reason: reason.to_owned(),
    }
}

/// A stable fingerprint (FNV-1a) of the listing filters.
pub(crate) fn fingerprint(task: &str, state: i32, labels: &HashMap<String, String>) -> u64 {
    let mut sorted: Vec<_> = labels.iter().collect();
    sorted.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    feed(task.as_bytes());
    feed(&state.to_le_bytes());
    for (k, v) in sorted {
        feed(k.as_bytes());
        feed(v.as_bytes());
    }
    hash
}

pub(crate) fn encode(last: Uuid, fingerprint: u64) -> String {
    let mut bytes = Vec::with_capacity(25);
    bytes.push(1u8);
    bytes.extend_from_slice(last.as_bytes());
    bytes.extend_from_slice(&fingerprint.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn decode(token: &str, fingerprint: u64) -> Result<Uuid, Error> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid("not a token returned by ListJobs"))?;
    if bytes.len() != 25 || bytes[0] != 1 {
        return Err(invalid("not a token returned by ListJobs"));
    }
    let id =
        Uuid::from_slice(&bytes[1..17]).map_err(|_| invalid("not a token returned by ListJobs"))?;
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[17..25]);
    if u64::from_be_bytes(fp) != fingerprint {
        return Err(invalid(
            "the filters differ from the call that returned this token",
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_is_bound_to_filters() {
        let id = Uuid::now_v7();
        let a = fingerprint("demo.echo", 1, &HashMap::new());
        let b = fingerprint("demo.echo", 2, &HashMap::new());
        let token = encode(id, a);
        assert_eq!(decode(&token, a).expect("decodes"), id);
        assert!(decode(&token, b).is_err());
        assert!(decode("garbage!", a).is_err());
    }
}
