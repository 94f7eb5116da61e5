# culvert, built from this repository. RocksDB is the copy bundled with the rocksdb crate
# (compiled from C++ during the build), so no system RocksDB is needed; bindgen needs libclang.
{
  lib,
  rustPlatform,
}:

let
  manifest = (lib.importTOML ../Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  src = lib.cleanSourceWith {
    src = ../.;
    filter =
      path: type:
      let
        base = baseNameOf path;
      in
      !(lib.elem base [
        "target"
        "result"
        ".git"
      ]);
  };
  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ rustPlatform.bindgenHook ];

  # The test suite starts servers and real clients (Python, matrix-nio): run it with
  # scripts/test, not in the sandbox.
  doCheck = false;

  meta = {
    description = manifest.description;
    homepage = "https://spec.matrix.org/";
    license = lib.licenses.asl20;
    mainProgram = "culvert";
    platforms = lib.platforms.linux;
  };
}
