//! The job's photo: plain base64 or a `data:image/...;base64,` URL. A photo that is not
//! valid base64 or not an image Gemini reads is ignored (the job is priced without it: the
//! guide's own example sends `"base64..."`); only a photo that is too large is an error.

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use sha2::{Digest, Sha256};

use super::PricingError;

/// The largest decoded photo accepted.
pub const MAX_PHOTO_BYTES: usize = 5 * 1024 * 1024;

/// Padding optional: phones and browsers differ.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// A decoded photo, ready for Gemini.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Photo {
    pub mime_type: &'static str,
    /// Standard, padded base64 of the bytes (what Gemini's `inline_data` expects).
    pub base64: String,
    /// sha256 of the bytes, hex: the request's image reference.
    pub sha256_hex: String,
}

/// Reads the photo. `Ok(None)`: no usable photo; `Err`: a photo too large to accept.
pub(crate) fn read(input: Option<&str>) -> Result<Option<Photo>, PricingError> {
    let Some(payload) = input.and_then(payload) else {
        return Ok(None);
    };
    let encoded: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    // Refuse before decoding: four base64 characters carry three bytes.
    if encoded.len() / 4 * 3 > MAX_PHOTO_BYTES + 3 {
        return Err(too_large());
    }
    let Some(bytes) = STANDARD
        .decode(&encoded)
        .or_else(|_| URL_SAFE.decode(&encoded))
        .ok()
    else {
        tracing::debug!(target: "Pricing", "photo is not valid base64; pricing without it");
        return Ok(None);
    };
    if bytes.len() > MAX_PHOTO_BYTES {
        return Err(too_large());
    }
    let Some(mime_type) = sniff(&bytes) else {
        tracing::debug!(target: "Pricing", "photo is not a JPEG, PNG, WebP or HEIC image; pricing without it");
        return Ok(None);
    };
    Ok(Some(Photo {
        mime_type,
        base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        sha256_hex: hex(&Sha256::digest(&bytes)),
    }))
}

/// The base64 part: after the comma of a `data:` URL, or the whole text.
fn payload(input: &str) -> Option<&str> {
    let input = input.trim();
    let payload = match input.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("data:") => {
            let (header, data) = input.split_once(',')?;
            // `data:text/plain,hello` is not a base64 photo.
            if !header.to_ascii_lowercase().ends_with(";base64") {
                return None;
            }
            data
        }
        _ => input,
    };
    Some(payload).filter(|p| !p.is_empty())
}

/// The image types Gemini accepts, recognised by their first bytes.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        [_, _, _, _, b'f', b't', b'y', b'p', brand @ ..] if brand.len() >= 4 => match &brand[..4] {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" => Some("image/heic"),
            b"mif1" | b"msf1" => Some("image/heif"),
            _ => None,
        },
        _ => None,
    }
}

fn too_large() -> PricingError {
    PricingError::InvalidInput(format!(
        "the photo is too large: the limit is {} MB",
        MAX_PHOTO_BYTES / (1024 * 1024)
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD as PADDED, STANDARD_NO_PAD};

    const JPEG: &[u8] = &[
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
    ];

    fn sha256(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    #[test]
    fn the_guides_placeholder_is_priced_without_a_photo() {
        assert_eq!(read(Some("base64...")), Ok(None));
        assert_eq!(read(Some("")), Ok(None));
        assert_eq!(read(Some("   ")), Ok(None));
        assert_eq!(read(None), Ok(None));
        assert_eq!(read(Some("data:image/png;base64,")), Ok(None));
        assert_eq!(read(Some("data:text/plain,hello")), Ok(None));
    }

    #[test]
    fn plain_base64_and_data_urls_give_the_same_photo() {
        let plain = PADDED.encode(JPEG);
        let expected = Photo {
            mime_type: "image/jpeg",
            base64: plain.clone(),
            sha256_hex: sha256(JPEG),
        };
        assert_eq!(read(Some(&plain)), Ok(Some(expected.clone())));
        let url = format!("data:image/jpeg;base64,{plain}");
        assert_eq!(read(Some(&url)), Ok(Some(expected.clone())));
        // Unpadded, wrapped over lines, or URL-safe: still the same photo.
        let unpadded = STANDARD_NO_PAD.encode(JPEG);
        let wrapped = format!("{}\r\n{}", &unpadded[..4], &unpadded[4..]);
        assert_eq!(read(Some(&wrapped)), Ok(Some(expected.clone())));
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(JPEG);
        assert_eq!(read(Some(&url_safe)), Ok(Some(expected)));
    }

    #[test]
    fn valid_base64_that_is_not_an_image_is_ignored() {
        assert_eq!(read(Some(&PADDED.encode(b"hello world"))), Ok(None));
    }

    #[test]
    fn image_types_are_recognised_by_their_magic_bytes() {
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0];
        assert_eq!(sniff(&png), Some("image/png"));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0"), Some("image/heic"));
        assert_eq!(sniff(b"\0\0\0\x18ftypmif1\0\0"), Some("image/heif"));
        assert_eq!(sniff(b"\0\0\0\x18ftypisom\0\0"), None);
        assert_eq!(sniff(b"GIF89a"), None);
        assert_eq!(sniff(&[]), None);
    }

    #[test]
    fn a_photo_over_the_limit_is_refused_and_one_at_the_limit_accepted() {
        let mut at_limit = vec![0u8; MAX_PHOTO_BYTES];
        at_limit[..JPEG.len()].copy_from_slice(JPEG);
        let photo = read(Some(&PADDED.encode(&at_limit))).unwrap().unwrap();
        assert_eq!(photo.sha256_hex, sha256(&at_limit));

        at_limit.push(0);
        let err = read(Some(&PADDED.encode(&at_limit))).unwrap_err();
        assert_eq!(
            err,
            PricingError::InvalidInput("the photo is too large: the limit is 5 MB".into())
        );
        // Far over the limit, refused without decoding (and even when not valid base64).
        let huge = "!".repeat(MAX_PHOTO_BYTES * 2);
        assert!(matches!(
            read(Some(&huge)),
            Err(PricingError::InvalidInput(_))
        ));
    }
}
