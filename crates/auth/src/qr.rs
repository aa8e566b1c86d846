//! QR codes as SVG, for enrolling an authenticator app: the page shows the TOTP `otpauth://` URI as a QR code that
//! the app scans. Rendering happens here, on the server, so that the secret never goes to a third-party QR service
//! and the page needs no JavaScript.

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// The longest data, in bytes, that [`try_qr_svg`] can encode: the byte-mode capacity of the largest QR code
/// (version 40) at error-correction level M. A provisioning URI is about a hundred bytes.
pub const QR_DATA_LEN_MAX: usize = 2_331;

/// The smallest width and height of the image, in pixels (the quiet zone included). About 256 pixels scan reliably
/// from a laptop screen; every module gets the same whole number of pixels, so the image can come out a little
/// larger.
const IMAGE_SIZE_MIN_PX: u32 = 256;

/// Renders `data` as a QR code in a standalone SVG document (`<?xml …?><svg …>…</svg>`), black on white, with the
/// four-module quiet zone that scanners need. Error correction is level M (15 % of the code can be damaged or
/// covered), the usual choice for screens. `None` if `data` is longer than [`QR_DATA_LEN_MAX`] bytes.
pub fn try_qr_svg(data: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).ok()?;
    Some(code.render::<svg::Color<'_>>().min_dimensions(IMAGE_SIZE_MIN_PX, IMAGE_SIZE_MIN_PX).build())
}

/// Renders `data` as a QR code in a standalone SVG document; see [`try_qr_svg`], which this calls.
///
/// # Panics
///
/// If `data` is longer than [`QR_DATA_LEN_MAX`] bytes. The callers render provisioning URIs that the server builds
/// itself, a hundred-odd bytes long, so a longer one is a bug rather than bad input; use [`try_qr_svg`] for data
/// that comes from elsewhere.
pub fn qr_svg(data: &str) -> String {
    try_qr_svg(data).expect("QR data within QR_DATA_LEN_MAX bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back the image an SVG from `qr_svg` draws: its size from the `width` attribute, and its dark pixels
    /// from the path, which is a list of `M{x} {y}h{w}v{h}H{x}V{y}` rectangles.
    fn rasterise(svg: &str) -> (usize, Vec<bool>) {
        let number_after = |text: &str, key: &str| -> usize {
            let start = text.find(key).unwrap() + key.len();
            text[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        };
        let size = number_after(svg, "width=\"");
        assert_eq!(size, number_after(svg, "height=\""), "the image is square");
        let path = &svg[svg.find(" d=\"").unwrap() + 4..];
        let path = &path[..path.find('"').unwrap()];
        let mut dark = vec![false; size * size];
        for rect in path.split('M').filter(|rect| !rect.is_empty()) {
            let numbers: Vec<usize> = rect
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().unwrap())
                .collect();
            let [x, y, w, h, ..] = numbers[..] else { panic!("unexpected path element {rect}") };
            for row in y..y + h {
                for column in x..x + w {
                    dark[row * size + column] = true;
                }
            }
        }
        (size, dark)
    }

    fn decode(svg: &str) -> String {
        let (size, dark) = rasterise(svg);
        let mut image =
            rqrr::PreparedImage::prepare_from_greyscale(size, size, |x, y| if dark[y * size + x] { 0 } else { 255 });
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "exactly one QR code in the image");
        grids[0].decode().unwrap().1
    }

    const URI: &str = "otpauth://totp/Rampart:alice%40example.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\
                       &issuer=Rampart&algorithm=SHA1&digits=6&period=30";

    #[test]
    fn renders_a_standalone_svg_document_of_at_least_256_pixels() {
        let svg = qr_svg(URI);
        assert!(svg.starts_with("<?xml"), "{}", &svg[..40]);
        assert!(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        let (size, dark) = rasterise(&svg);
        assert!((IMAGE_SIZE_MIN_PX as usize..2 * IMAGE_SIZE_MIN_PX as usize).contains(&size), "{size}");
        // The quiet zone: the outermost rows and columns are light.
        assert!((0..size).all(|i| !dark[i] && !dark[i * size] && !dark[(size - 1) * size + i]));
        assert!(dark.iter().any(|&pixel| pixel));
        assert_eq!(qr_svg(URI), svg, "rendering is deterministic");
        assert_ne!(qr_svg("otpauth://totp/other"), svg);
    }

    #[test]
    fn the_image_decodes_back_to_the_data() {
        assert_eq!(decode(&qr_svg(URI)), URI);
        assert_eq!(decode(&qr_svg("x")), "x");
    }

    #[test]
    fn data_beyond_the_capacity_is_refused_not_truncated() {
        let longest = "a".repeat(QR_DATA_LEN_MAX);
        assert!(try_qr_svg(&longest).is_some());
        assert_eq!(try_qr_svg(&format!("{longest}a")), None);
        assert!(try_qr_svg("").is_some(), "empty data is a valid, if useless, QR code");
    }
}
