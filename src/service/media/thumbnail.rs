//! Making thumbnails: the requested size snapped to the spec's standard sizes, images decoded
//! under limits (decompression bombs and huge dimensions are refused before any pixel buffer is
//! allocated), resized and re-encoded. Runs on the blocking pool.

use std::{io::Cursor, path::Path};

use http::StatusCode;
use image::{ImageError, ImageFormat, ImageReader, Limits, imageops::FilterType};
use ruma::api::error::ErrorKind;

use crate::{Error, Result};

/// Widest or tallest image decoded for a thumbnail.
pub const MAX_DIMENSION: u32 = 12_000;
/// Most memory the decoder may allocate for one image.
pub const MAX_ALLOC: u64 = 256 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "crop" => Some(Method::Crop),
            "scale" => Some(Method::Scale),
            _ => None,
        }
    }
}

/// A thumbnail size actually made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

/// The spec's recommended sizes, smallest first.
const CROP_SIZES: [(u32, u32); 2] = [(32, 32), (96, 96)];
const SCALE_SIZES: [(u32, u32); 3] = [(320, 240), (640, 480), (800, 600)];

impl Size {
    /// The smallest standard size at least as large as requested (thumbnails may be larger
    /// than asked for). Crops larger than the largest crop size become scales; beyond the
    /// largest scale size, that one.
    pub fn standard(width: u32, height: u32, method: Method) -> Self {
        let fits = |&&(w, h): &&(u32, u32)| w >= width && h >= height;
        if method == Method::Crop
            && let Some(&(w, h)) = CROP_SIZES.iter().find(fits)
        {
            return Size {
                width: w,
                height: h,
                method: Method::Crop,
            };
        }
        let &(w, h) = SCALE_SIZES
            .iter()
            .find(fits)
            .unwrap_or(&SCALE_SIZES[SCALE_SIZES.len() - 1]);
        Size {
            width: w,
            height: h,
            method: Method::Scale,
        }
    }
}

/// Whether thumbnails are made for this content type.
pub fn can_thumbnail(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "image/png" | "image/jpeg" | "image/jpg" | "image/webp" | "image/gif"
    )
}

pub enum Made {
    /// The original is a JPEG no larger than the thumbnail would be: serve it as it is.
    Original { width: u32, height: u32 },
    Encoded {
        bytes: Vec<u8>,
        content_type: &'static str,
        width: u32,
        height: u32,
    },
}

fn cannot_thumbnail(why: impl std::fmt::Display) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::Unknown,
        format!("Cannot generate a thumbnail for this content: {why}"),
    )
}

fn too_large() -> Error {
    Error::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::TooLarge,
        "The image is too large to thumbnail.",
    )
}

fn decode_error(e: ImageError) -> Error {
    match e {
        ImageError::Limits(_) => too_large(),
        // The file opened; decoders report truncated or garbled data as I/O errors too
        // (unexpected end of file), so these are the image's fault, not the disk's.
        other => cannot_thumbnail(other),
    }
}

/// Decodes the image in `path` under [`MAX_DIMENSION`] and [`MAX_ALLOC`] and makes the
/// thumbnail of `size`.
pub fn make(path: &Path, size: Size) -> Result<Made> {
    let reader = ImageReader::open(path)
        .map_err(|e| Error::internal(format!("opening media for a thumbnail: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::internal(format!("reading media for a thumbnail: {e}")))?;
    let format = reader
        .format()
        .ok_or_else(|| cannot_thumbnail("unknown image format"))?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(cannot_thumbnail("unsupported image format"));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    let mut reader = reader;
    reader.limits(limits);
    let image = reader.decode().map_err(decode_error)?;
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(cannot_thumbnail("empty image"));
    }
    // Already small: a JPEG is served as it is; the other formats may be animated (GIF, WebP,
    // APNG), which a thumbnail must not be unless asked for (culvert never makes animated
    // ones), so their first frame is re-encoded, at its own size.
    let small = width <= size.width && height <= size.height;
    if small && format == ImageFormat::Jpeg {
        return Ok(Made::Original { width, height });
    }
    let thumb = if small {
        image
    } else {
        match size.method {
            // Never upscaled: a side shorter than the crop is kept, the other cropped to match.
            Method::Crop => image.resize_to_fill(
                size.width.min(width),
                size.height.min(height),
                FilterType::Triangle,
            ),
            Method::Scale => image.resize(size.width, size.height, FilterType::Triangle),
        }
    };
    let mut bytes = Vec::new();
    // Photos stay JPEG (smaller); everything else becomes PNG, which keeps transparency.
    let content_type = if format == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85);
        thumb
            .to_rgb8()
            .write_with_encoder(encoder)
            .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
        "image/jpeg"
    } else {
        thumb
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
        "image/png"
    };
    Ok(Made::Encoded {
        bytes,
        content_type,
        width: thumb.width(),
        height: thumb.height(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_snap_to_the_standard_ones() {
        let s = Size::standard(30, 30, Method::Crop);
        assert_eq!((s.width, s.height, s.method), (32, 32, Method::Crop));
        let s = Size::standard(64, 50, Method::Crop);
        assert_eq!((s.width, s.height, s.method), (96, 96, Method::Crop));
        let s = Size::standard(200, 200, Method::Crop);
        assert_eq!((s.width, s.height, s.method), (320, 240, Method::Scale));
        let s = Size::standard(500, 400, Method::Scale);
        assert_eq!((s.width, s.height), (640, 480));
        let s = Size::standard(5000, 4000, Method::Scale);
        assert_eq!((s.width, s.height), (800, 600));
        let s = Size::standard(0, 0, Method::Scale);
        assert_eq!((s.width, s.height), (320, 240));
    }

    #[test]
    fn only_images_are_thumbnailed() {
        assert!(can_thumbnail("image/png"));
        assert!(can_thumbnail("IMAGE/JPEG; charset=x"));
        assert!(!can_thumbnail("image/svg+xml"));
        assert!(!can_thumbnail("text/plain"));
        assert!(!can_thumbnail(""));
    }
}
