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
  settings =
    cfg.settings
    // lib.optionalAttrs cfg.backup.enable {
      backup = {
        inherit (cfg.backup) path keep;
      };
    };
  configFile = format.generate "conduit.toml" { global = settings; };
  # A backup directory under /var/lib is one of the service's state directories.
  backupStateDirectory = lib.removePrefix "/var/lib/" cfg.backup.path;
  stateDirectories = [
    "culvert"
  ]
  ++ lib.optional (
    cfg.backup.enable && lib.hasPrefix "/var/lib/" cfg.backup.path
  ) backupStateDirectory;
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

    backup = {
      enable = lib.mkEnableOption ''
        backups of the database and the media files (`culvert backup create`), taken by the
        running server on a timer; `culvert backup list|verify|restore` read them
      '';
      path = lib.mkOption {
        type = lib.types.str;
        default = "/var/lib/culvert-backups";
        description = ''
          The backup directory, outside the database directory. Under /var/lib it is made
          as a state directory of the service; elsewhere it must exist, writable by it.
        '';
      };
      keep = lib.mkOption {
        type = lib.types.ints.positive;
        default = 7;
        description = "Backups kept; older ones go when a new one is taken.";
      };
      startAt = lib.mkOption {
        type = lib.types.str;
        default = "daily";
        description = "When backups are taken (a systemd calendar expression).";
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
        # Named, so that the backup unit runs as the same (dynamic) user.
        User = "culvert";
        StateDirectory = stateDirectories;
        ReadWritePaths = lib.optional cfg.backup.enable cfg.backup.path;
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

    # The backup: asks the running server (which writes the backup); with the server
    # stopped, opens the database itself.
    systemd.services.culvert-backup = lib.mkIf cfg.backup.enable {
      description = "culvert backup (database and media files)";
      after = [ "culvert.service" ];
      startAt = cfg.backup.startAt;
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${lib.getExe cfg.package} --config ${configFile} backup create";
        DynamicUser = true;
        User = "culvert";
        StateDirectory = stateDirectories;
        ReadWritePaths = [ cfg.backup.path ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        UMask = "0077";
      };
    };
  };
}
