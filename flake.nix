{
  description = "culvert: a lightweight Matrix homeserver with an embedded RocksDB";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        culvert = pkgs.callPackage ./nix/package.nix { };
        default = culvert;
      });

      nixosModules.default =
        { pkgs, lib, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.culvert.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.culvert;
        };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.culvert ];
          packages = [
            pkgs.cargo-nextest
            pkgs.clippy
            pkgs.rustfmt
            pkgs.python3
          ];
        };
      });

      checks = forAll (pkgs: {
        vm = import ./nix/vm-test.nix {
          inherit pkgs;
          module = self.nixosModules.default;
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.culvert;
        };
      });
    };
}
