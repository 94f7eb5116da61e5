# The NixOS module: services.culvert. Settings are the `[global]` table of culvert's config
# (Conduit's format), written to a TOML file; the common ones are typed options.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.culvert;
  format = pkgs.formats.toml { };
  configFile = format.generate "conduit.toml" { global = cfg.settings; };
in
{
  options.services.culvert = {
    enable = lib.mkEnableOption "culvert, a lightweight Matrix homeserver";

    package = lib.mkOption {
      type = lib.types.package;
      description = "The culvert package to run.";
    };

    settings = lib.mkOption {
      description = ''
        culvert's configuration: the `[global]` table of its config file (Conduit's format; see
        conduit.toml.example). Keys not listed here are passed through unchanged.
      '';
      default = { };
      type = lib.types.submodule {
        freeformType = format.type;
        options = {
          server_name = lib.mkOption {
            type = lib.types.str;
            example = "example.org";
            description = "The name in users' IDs (@alice:example.org). Cannot be changed later.";
          };
          address = lib.mkOption {
            type = lib.types.str;
            default = "127.0.0.1";
            description = "Address to listen on.";
          };
          port = lib.mkOption {
            type = lib.types.port;
            default = 6167;
            description = "Port to listen on.";
          };
          allow_registration = lib.mkOption {
            type = lib.types.bool;
            default = false;
            description = "Whether anyone may register (ideally with a registration_token).";
          };
          allow_federation = lib.mkOption {
            type = lib.types.bool;
            default = true;
            description = "Whether to talk to other Matrix servers.";
          };
          trusted_servers = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ "matrix.org" ];
            description = "Servers trusted to vouch for other servers' signing keys.";
          };
          database_path = lib.mkOption {
            type = lib.types.str;
            default = "/var/lib/culvert";
            readOnly = true;
            description = "Where the database lives: the service's state directory.";
          };
        };
      };
    };

    extraEnvironment = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = {
        CULVERT_LOG = "info,culvert=debug";
      };
      description = "Extra environment variables; CULVERT_<KEY> overrides a config key.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.culvert = {
      description = "culvert Matrix homeserver";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment = cfg.extraEnvironment;
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = 60;
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 5;
        DynamicUser = true;
        StateDirectory = "culvert";
        StateDirectoryMode = "0700";
        WorkingDirectory = "/var/lib/culvert";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
        SystemCallErrorNumber = "EPERM";
        CapabilityBoundingSet = "";
        UMask = "0077";
        LimitNOFILE = 65536;
      };
    };
  };
}
