//! Preview thumbnails of uploaded images: decoded with the `image` crate under memory and size
//! limits (a small file must not decompress into gigabytes), scaled down to fit a square, and
//! encoded as JPEG next to the original.
//!
//! Only plaintext JPEG, PNG and WebP images are thumbnailed; encrypted media never are (the
//! server cannot read them), and other image types are kept without a thumbnail.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// Content type of every thumbnail.
pub const THUMBNAIL_CONTENT_TYPE: &str = "image/jpeg";
/// JPEG quality of thumbnails.
pub const THUMBNAIL_QUALITY: u8 = 75;
/// Widest or tallest image decoded.
pub const MAX_SOURCE_SIDE: u32 = 16_384;
/// Most memory one decode may take.
pub const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// A thumbnail: JPEG bytes and their dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// JPEG bytes.
    pub bytes: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The decoder for a content type (by essence), if it is one we thumbnail.
pub fn format_of(essence: &str) -> Option<ImageFormat> {
    match essence {
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

fn decode(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage, String> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// A JPEG thumbnail of `bytes` (in `format`) fitting in `max_side` x `max_side`, keeping the
/// aspect ratio (never enlarged). An error says why the bytes are not a usable image.
pub fn make(bytes: &[u8], format: ImageFormat, max_side: u32) -> Result<Thumbnail, String> {
    let image = decode(bytes, format)?;
    let image = if image.width() > max_side || image.height() > max_side {
        image.thumbnail(max_side, max_side)
    } else {
        image
    };
    let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
    let mut out = Vec::new();
    rgb.write_with_encoder(JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY))
        .map_err(|e| e.to_string())?;
    Ok(Thumbnail {
        bytes: out,
        width: rgb.width(),
        height: rgb.height(),
    })
}

/// Width and height of an image (JPEG, PNG or WebP, guessed from its bytes), decoding it
/// completely: `None` when it does not decode. For clients and tests that check a thumbnail.
pub fn decoded_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let format = image::guess_format(bytes).ok()?;
    format_of(format.to_mime_type())?;
    decode(bytes, format)
        .ok()
        .map(|image| (image.width(), image.height()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, RgbImage};

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image.as_raw(),
                width,
                height,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    #[test]
    fn thumbnails_fit_the_box_and_keep_the_aspect_ratio() {
        let source = png(1200, 600);
        let thumb = make(&source, ImageFormat::Png, 320).unwrap();
        assert_eq!((thumb.width, thumb.height), (320, 160));
        assert!(thumb.bytes.len() < source.len());
        assert_eq!(decoded_dimensions(&thumb.bytes), Some((320, 160)));
        assert_eq!(
            image::guess_format(&thumb.bytes).unwrap(),
            ImageFormat::Jpeg
        );
    }

    #[test]
    fn small_images_are_not_enlarged() {
        let thumb = make(&png(100, 40), ImageFormat::Png, 320).unwrap();
        assert_eq!((thumb.width, thumb.height), (100, 40));
    }

    #[test]
    fn garbage_and_wrong_formats_are_refused() {
        assert!(make(b"not an image at all", ImageFormat::Png, 320).is_err());
        assert!(make(&png(10, 10), ImageFormat::Jpeg, 320).is_err());
        assert_eq!(decoded_dimensions(b"nope"), None);
        assert_eq!(format_of("image/gif"), None);
        assert_eq!(format_of("image/webp"), Some(ImageFormat::WebP));
    }
}
