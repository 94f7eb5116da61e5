# A NixOS VM test (nixosTests style): the service starts and answers /_matrix/client/versions.
{
  pkgs,
  module,
  package,
}:

pkgs.testers.runNixOSTest {
  name = "culvert";
  nodes.server = {
    imports = [ module ];
    services.culvert = {
      enable = true;
      inherit package;
      settings.server_name = "example.test";
    };
  };
  testScript = ''
    server.wait_for_unit("culvert.service")
    server.wait_for_open_port(6167)
    server.succeed("curl --fail http://127.0.0.1:6167/_matrix/client/versions | grep -q v1.")
  '';
}
