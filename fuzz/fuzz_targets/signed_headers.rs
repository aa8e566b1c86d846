//! Feeds arbitrary bytes to the signed-request header parser as three header values, and every request that parses
//! to `verify`. Neither may panic, and a random signature must never verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_auth::{ApiKeySecret, SIGNATURE_WINDOW_MS_MAX, SignatureError, parse_signed_headers, verify};

/// Splits the input at the first two 0xff bytes (which no valid header contains) into key, timestamp and signature;
/// a missing part stands for a missing header.
fn split(data: &[u8]) -> [Option<&[u8]>; 3] {
    let mut parts = data.splitn(3, |&byte| byte == 0xff);
    [parts.next(), parts.next(), parts.next()]
}

fuzz_target!(|data: &[u8]| {
    let [key, timestamp, sign] = split(data);
    let Ok(headers) = parse_signed_headers(key, timestamp, sign) else { return };
    let secret = ApiKeySecret::from_bytes(&[0x5a; 32]).expect("32 bytes");
    let now_ms = headers.timestamp_ms;
    let result = verify(&secret, "POST", "/v1/orders", data, &headers, now_ms, SIGNATURE_WINDOW_MS_MAX);
    assert_eq!(result, Err(SignatureError::BadSignature), "a fuzzed signature verified");
});
