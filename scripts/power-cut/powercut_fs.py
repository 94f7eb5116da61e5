"""A filesystem that forgets what was never fsynced, to simulate a power cut.

Mounted with FUSE over a backing directory. Files are passed through, except that written
data is kept in memory (a whole image of each file written since its last fsync) and reaches
the backing directory only when the file is fsynced — as data reaches a disk only through the
page cache's writeback or an fsync. `mkdir MOUNTPOINT/.power-cut` cuts the power: every
unsynced image is dropped and the filesystem refuses all writes from then on, so what the
backing directory holds is what a machine would find on its disk after losing power with
nothing written back. Unmount it (`umount MOUNTPOINT`) afterwards; unmounted without a cut, it
writes everything back, as an orderly shutdown does.

Directory operations (create, rename, unlink, mkdir) go to the backing directory at once: the
test is about the write-ahead log's data, which is what `durability` decides.

Usage: powercut_fs.py BACKING_DIR MOUNTPOINT   (stays in the foreground until unmounted)
"""

import errno
import os
import sys
import threading

import mfusepy as fuse

FALLOC_FL_KEEP_SIZE = 0x01


class PowerCutFS(fuse.Operations):
    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.images: dict[str, bytearray] = {}
        self.mutex = threading.Lock()
        self.cut = False

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _image(self, full: str) -> bytearray:
        image = self.images.get(full)
        if image is None:
            with open(full, "rb") as f:
                image = bytearray(f.read())
            self.images[full] = image
        return image

    def _alive(self) -> None:
        if self.cut:
            raise fuse.FuseOSError(errno.EIO)

    def destroy(self, path):
        """A clean unmount writes back what is left, as an orderly shutdown would."""
        with self.mutex:
            if not self.cut:
                for full, image in self.images.items():
                    if os.path.exists(full):
                        with open(full, "r+b") as f:
                            f.truncate(len(image))
                            f.write(image)
            self.images.clear()

    def power_cut(self) -> int:
        with self.mutex:
            self.cut = True
            lost = sum(len(i) for i in self.images.values())
            self.images.clear()
        return lost

    # ---- metadata -------------------------------------------------------------------------

    def getattr(self, path, fh=None):
        full = self._path(path)
        try:
            st = os.lstat(full)
        except OSError as e:
            raise fuse.FuseOSError(e.errno) from e
        attrs = {
            "st_mode": st.st_mode,
            "st_nlink": st.st_nlink,
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_size": st.st_size,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }
        with self.mutex:
            image = self.images.get(full)
            if image is not None:
                attrs["st_size"] = len(image)
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def statfs(self, path):
        sv = os.statvfs(self._path(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                            "f_favail", "f_ffree", "f_files", "f_flag",
                                            "f_frsize", "f_namemax")}

    def access(self, path, amode):
        if not os.access(self._path(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._path(path), ns=times)
        return 0

    def mkdir(self, path, mode):
        if path == "/.power-cut":
            lost = self.power_cut()
            print(f"power cut: {lost} unsynced bytes lost", flush=True)
            return 0
        self._alive()
        os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path):
        self._alive()
        os.rmdir(self._path(path))
        return 0

    def unlink(self, path):
        self._alive()
        full = self._path(path)
        with self.mutex:
            os.unlink(full)
            self.images.pop(full, None)
        return 0

    def rename(self, old, new):
        self._alive()
        old_full, new_full = self._path(old), self._path(new)
        with self.mutex:
            os.rename(old_full, new_full)
            self.images.pop(new_full, None)
            image = self.images.pop(old_full, None)
            if image is not None:
                self.images[new_full] = image
        return 0

    def link(self, target, source):
        self._alive()
        os.link(self._path(source), self._path(target))
        return 0

    # ---- data -----------------------------------------------------------------------------

    def open(self, path, flags):
        full = self._path(path)
        fd = os.open(full, flags & ~(os.O_TRUNC | os.O_APPEND | os.O_DIRECT))
        if flags & os.O_TRUNC:
            with self.mutex:
                self.images[full] = bytearray()
        return fd

    def create(self, path, mode, fi=None):
        self._alive()
        full = self._path(path)
        fd = os.open(full, os.O_RDWR | os.O_CREAT, mode)
        with self.mutex:
            self.images[full] = bytearray()
        return fd

    def read(self, path, size, offset, fh):
        full = self._path(path)
        with self.mutex:
            image = self.images.get(full)
            if image is not None:
                return bytes(image[offset:offset + size])
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._alive()
        full = self._path(path)
        with self.mutex:
            image = self._image(full)
            end = offset + len(data)
            if len(image) < end:
                image.extend(b"\0" * (end - len(image)))
            image[offset:end] = data
        return len(data)

    def truncate(self, path, length, fh=None):
        self._alive()
        full = self._path(path)
        with self.mutex:
            image = self._image(full)
            if len(image) > length:
                del image[length:]
            else:
                image.extend(b"\0" * (length - len(image)))
        return 0

    def fallocate(self, path, mode, offset, size, fh):
        self._alive()
        if mode & FALLOC_FL_KEEP_SIZE:
            return 0
        full = self._path(path)
        with self.mutex:
            image = self._image(full)
            if len(image) < offset + size:
                image.extend(b"\0" * (offset + size - len(image)))
        return 0

    def fsync(self, path, datasync, fh):
        self._alive()
        full = self._path(path)
        with self.mutex:
            image = self.images.pop(full, None)
            if image is not None:
                fd = os.open(full, os.O_WRONLY)
                try:
                    os.ftruncate(fd, len(image))
                    os.pwrite(fd, bytes(image), 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = PowerCutFS(backing)
    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=False)


if __name__ == "__main__":
    main()
