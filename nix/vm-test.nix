# A NixOS VM test (nixosTests style): the service starts and answers /_matrix/client/versions;
# the backup unit (started by hand here, daily by its timer) leaves a backup.
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
      backup.enable = true;
    };
  };
  testScript = ''
    server.wait_for_unit("culvert.service")
    server.wait_for_open_port(6167)
    server.succeed("curl --fail http://127.0.0.1:6167/_matrix/client/versions | grep -q v1.")
    server.succeed("systemctl start culvert-backup.service")
    server.succeed("test -d /var/lib/culvert-backups/db")
    server.succeed("systemctl list-timers | grep -q culvert-backup")
  '';
}
