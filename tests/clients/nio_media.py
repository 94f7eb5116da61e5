#!/usr/bin/env python3
"""The media scenario driven by the real client library matrix-nio.

Run by tests/integration/clients.rs against an in-process culvert with open registration:

    nio_media.py --homeserver URL

A user registers, reads the content repository config, uploads a PNG image with a file name,
downloads it (authenticated media, as nio does) and checks bytes, type and name, downloads it
again under another name, and fetches a cropped and a scaled thumbnail, whose dimensions are
read from the PNG header. The legacy unauthenticated download path is fetched directly.
Prints "nio media: ok" and exits 0, or explains on stderr and exits 1.
"""

import argparse
import asyncio
import io
import logging
import struct
import sys
import urllib.request
import zlib

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ContentRepositoryConfigResponse,
    MemoryDownloadResponse,
    RegisterResponse,
    ResizingMethod,
    ThumbnailResponse,
    UploadResponse,
)

CONFIG = AsyncClientConfig(max_timeouts=1, max_limit_exceeded=0, request_timeout=30)


def fail(step, got):
    print(f"nio media: FAILED: {step}: got {got!r}", file=sys.stderr)
    sys.exit(1)


def expect(step, response, kind):
    if not isinstance(response, kind):
        fail(step, response)
    return response


def png(width, height):
    """An RGB PNG with a gradient, written by hand (no imaging library needed)."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x % 256, y % 256, (x + y) % 256)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_size(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    homeserver = args.homeserver.rstrip("/")

    client = AsyncClient(homeserver, "niomedia", config=CONFIG)
    try:
        expect("register", await client.register("niomedia", "media-pw-1"), RegisterResponse)

        config = expect(
            "content repository config",
            await client.content_repository_config(),
            ContentRepositoryConfigResponse,
        )
        if not config.upload_size or config.upload_size < 1024 * 1024:
            fail("m.upload.size", config.upload_size)

        image = png(400, 300)
        upload, _keys = await client.upload(
            io.BytesIO(image),
            content_type="image/png",
            filename="picture.png",
            filesize=len(image),
        )
        upload = expect("upload", upload, UploadResponse)
        mxc = upload.content_uri
        if not mxc.startswith("mxc://"):
            fail("content_uri", mxc)

        download = expect("download", await client.download(mxc=mxc), MemoryDownloadResponse)
        if download.body != image:
            fail("downloaded bytes", len(download.body))
        if download.content_type != "image/png":
            fail("downloaded content type", download.content_type)
        if download.filename != "picture.png":
            fail("downloaded file name", download.filename)

        renamed = expect(
            "download under another name",
            await client.download(mxc=mxc, filename="renamed.png"),
            MemoryDownloadResponse,
        )
        if renamed.filename != "renamed.png" or renamed.body != image:
            fail("renamed download", renamed.filename)

        server_name, media_id = mxc[len("mxc://") :].split("/", 1)
        for width, height, method, expected in [
            (96, 96, ResizingMethod.crop, (96, 96)),
            (320, 240, ResizingMethod.scale, (320, 240)),
        ]:
            thumb = expect(
                f"thumbnail {width}x{height} {method.value}",
                await client.thumbnail(server_name, media_id, width, height, method),
                ThumbnailResponse,
            )
            if thumb.content_type != "image/png":
                fail("thumbnail content type", thumb.content_type)
            if png_size(thumb.body) != expected:
                fail(f"thumbnail {method.value} dimensions", png_size(thumb.body))

        # The legacy, unauthenticated path serves the same bytes.
        legacy_url = f"{homeserver}/_matrix/media/v3/download/{server_name}/{media_id}"
        legacy = await asyncio.to_thread(lambda: urllib.request.urlopen(legacy_url).read())
        if legacy != image:
            fail("legacy download", len(legacy))
    finally:
        await client.close()
    print("nio media: ok")


if __name__ == "__main__":
    asyncio.run(main())
