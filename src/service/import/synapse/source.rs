//! Reading Synapse: its config files, its signing key, its database (SQLite or PostgreSQL).

use super::*;

/// What the import needs of Synapse's configuration.
pub(super) struct SynapseSettings {
    pub(super) server_name: OwnedServerName,
    pub(super) database: DatabaseLocation,
    pub(super) media_store: Option<PathBuf>,
    /// The first signing key: (version, 32-byte seed).
    pub(super) signing_key: (String, Vec<u8>),
    pub(super) pepper: String,
    pub(super) appservice_files: Vec<String>,
    /// The directory of the first config file.
    pub(super) config_dir: Option<PathBuf>,
}

impl SynapseSettings {
    /// A path the config names: as it is (Synapse's working directory is unknown here), or
    /// next to the config when it is relative and not found so.
    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        let given = PathBuf::from(path);
        match &self.config_dir {
            Some(dir) if given.is_relative() && !given.exists() => dir.join(given),
            _ => given,
        }
    }
}

/// Synapse's settings from its config files; without any (only `--database` and friends),
/// its server name is taken to be `ours`.
pub(super) fn read_settings(
    source: &SynapseSource,
    ours: &ruma::ServerName,
) -> Result<SynapseSettings, String> {
    let mut merged = serde_yaml_ng::Mapping::new();
    let mut config_dir = None;
    for path in &source.configs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("{} is no YAML: {e}", path.display()))?;
        if let serde_yaml_ng::Value::Mapping(map) = value {
            merged.extend(map);
        }
        config_dir.get_or_insert_with(|| path.parent().map(Path::to_owned).unwrap_or_default());
    }
    let config: Value = serde_json::to_value(&merged)
        .map_err(|e| format!("Synapse's config cannot be read: {e}"))?;
    let server_name = match config["server_name"].as_str() {
        Some(name) => name,
        None if source.configs.is_empty() => ours.as_str(),
        None => return Err("Synapse's config names no server_name".into()),
    };
    let server_name = OwnedServerName::try_from(server_name)
        .map_err(|e| format!("Synapse's server_name {server_name:?}: {e}"))?;
    let database = match &source.database {
        Some(given) => DatabaseLocation::given(given)?,
        None => DatabaseLocation::configured(&config)?,
    };
    let media_store = source.media_store.clone().or_else(|| {
        config["media_store_path"]
            .as_str()
            .map(PathBuf::from)
            .or_else(|| config_dir.as_ref().map(|dir| dir.join("media_store")))
    });
    let key_path = match &source.signing_key {
        Some(path) => Some(path.clone()),
        None => config["signing_key_path"]
            .as_str()
            .map(PathBuf::from)
            .or_else(|| {
                config_dir
                    .as_ref()
                    .map(|dir| dir.join(format!("{server_name}.signing.key")))
            }),
    };
    let key_text = match (&key_path, config["signing_key"].as_str()) {
        (_, Some(inline)) => inline.to_owned(),
        (Some(path), None) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the signing key {}: {e}", path.display()))?,
        (None, None) => return Err("Synapse's config names no signing key".into()),
    };
    let signing_key = parse_signing_key(&key_text)?;
    let pepper = config["password_config"]["pepper"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let appservice_files = config["app_service_config_files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(SynapseSettings {
        server_name,
        database,
        media_store,
        signing_key,
        pepper,
        appservice_files,
        config_dir,
    })
}

/// Where Synapse's database is.
#[derive(Clone, Debug)]
pub(super) enum DatabaseLocation {
    Sqlite(PathBuf),
    Postgres(Box<postgres::Config>),
}

impl DatabaseLocation {
    /// `--database`: an SQLite file, or a PostgreSQL connection string (a
    /// `postgresql://` URL or `key=value` words).
    fn given(given: &Path) -> Result<Self, String> {
        let text = given.to_string_lossy();
        if text.starts_with("postgres://")
            || text.starts_with("postgresql://")
            || text.contains('=')
        {
            let config = text
                .parse::<postgres::Config>()
                .map_err(|e| format!("--database {text:?}: {e}"))?;
            return Ok(Self::Postgres(Box::new(config)));
        }
        Ok(Self::Sqlite(given.to_owned()))
    }

    /// What Synapse's config names: `database` (or the `databases` entry holding its main
    /// store, which must hold its state too), or the old `database_path`.
    fn configured(config: &Value) -> Result<Self, String> {
        let database = if config["database"].is_object() {
            config["database"].clone()
        } else if let Some(databases) = config["databases"].as_object() {
            let holds = |entry: &Value, store: &str| {
                entry["data_stores"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == store))
            };
            let main = databases
                .values()
                .find(|d| holds(d, "main"))
                .ok_or("Synapse's `databases` has none holding its main store")?;
            if !holds(main, "state") {
                return Err(
                    "Synapse keeps its state in a database of its own (`databases`): this import reads one database"
                        .into(),
                );
            }
            main.clone()
        } else if let Some(path) = config["database_path"].as_str() {
            return Ok(Self::Sqlite(PathBuf::from(path)));
        } else {
            return Err("Synapse's config names no database".into());
        };
        let args = &database["args"];
        match database["name"].as_str() {
            Some("sqlite3") | None => args["database"]
                .as_str()
                .map(|path| Self::Sqlite(PathBuf::from(path)))
                .ok_or_else(|| "Synapse's config names no SQLite file".into()),
            Some("psycopg2") => {
                // psycopg2's keywords, as Synapse hands them to it.
                let mut pg = postgres::Config::new();
                let text = |key: &str| args[key].as_str().map(str::to_owned);
                if let Some(user) = text("user") {
                    pg.user(&user);
                }
                if let Some(password) = text("password") {
                    pg.password(password);
                }
                if let Some(name) = text("dbname").or_else(|| text("database")) {
                    pg.dbname(&name);
                }
                match text("host") {
                    Some(host) => pg.host(&host),
                    None => pg.host("/var/run/postgresql"),
                };
                let port = args["port"]
                    .as_u64()
                    .or_else(|| text("port").and_then(|p| p.parse().ok()));
                if let Some(port) = port.and_then(|p| u16::try_from(p).ok()) {
                    pg.port(port);
                }
                Ok(Self::Postgres(Box::new(pg)))
            }
            Some(other) => Err(format!("Synapse's database engine {other:?} is unknown")),
        }
    }
}

/// The first key of a Synapse signing key file: `ed25519 <version> <base64 seed>` per line.
pub(super) fn parse_signing_key(text: &str) -> Result<(String, Vec<u8>), String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("the signing key file is empty")?;
    let mut fields = line.split_whitespace();
    let (Some("ed25519"), Some(version), Some(seed)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err("the signing key is not in Synapse's form `ed25519 <version> <key>`".into());
    };
    // Padded or not, standard or URL-safe alphabet: Synapse reads all of them.
    let seed = seed
        .trim_end_matches('=')
        .replace('-', "+")
        .replace('_', "/");
    let seed = ruma::serde::Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(&seed)
        .map_err(|e| format!("the signing key is not base64: {e}"))?
        .into_inner();
    if seed.len() != 32 {
        return Err("the signing key is not a 32-byte ed25519 seed".into());
    }
    Ok((version.to_owned(), seed))
}

/// An ed25519 seed as the PKCS#8 (v1) document the signing key is kept as here.
pub(super) fn seed_to_pkcs8(seed: &[u8]) -> Vec<u8> {
    // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// One value of a result row, whichever engine gave it.
#[derive(Clone, Debug)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    pub(super) fn text(&self) -> Option<String> {
        match self {
            Cell::Text(s) => Some(s.clone()),
            Cell::Bytes(b) => String::from_utf8(b.clone()).ok(),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Null => None,
        }
    }
    pub(super) fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            Cell::Text(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub(super) fn flag(&self) -> bool {
        self.int().is_some_and(|i| i != 0) || matches!(self, Cell::Text(s) if s == "true")
    }
    pub(super) fn json(&self) -> Option<Value> {
        match self {
            Cell::Text(s) => serde_json::from_str(s).ok(),
            Cell::Bytes(b) => serde_json::from_slice(b).ok(),
            _ => None,
        }
    }
}

pub(super) type Row = Vec<Cell>;

/// The Synapse database, opened read-only.
pub(super) enum SynapseDb {
    Sqlite(rusqlite::Connection),
    /// A connection on a thread of its own (the `postgres` client runs its own small
    /// runtime, which may not be started inside the import's).
    Postgres(PgConnection),
}

/// The tables every Synapse database has.
const SYNAPSE_TABLES: [&str; 3] = ["users", "event_json", "state_groups_state"];

impl SynapseDb {
    pub(super) fn open(location: &DatabaseLocation) -> Result<Self, String> {
        let db = match location {
            DatabaseLocation::Sqlite(path) => {
                if !path.is_file() {
                    return Err(format!("{} is no file", path.display()));
                }
                // Read-only; a write-ahead log left by a stopped Synapse is read as part of
                // the database (never `immutable`, which would ignore it).
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                Self::Sqlite(conn)
            }
            DatabaseLocation::Postgres(config) => Self::Postgres(PgConnection::open(config)?),
        };
        let sql = match db {
            Self::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ($1, $2, $3)"
            }
            Self::Postgres(_) => {
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_name IN ($1, $2, $3)"
            }
        };
        let what = match location {
            DatabaseLocation::Sqlite(path) => path.display().to_string(),
            // Not the connection string: it may hold a password.
            DatabaseLocation::Postgres(_) => "Synapse's PostgreSQL database".to_owned(),
        };
        let found = db
            .rows(sql, &SYNAPSE_TABLES)
            .map_err(|e| format!("{what} cannot be read: {e}"))?;
        if found.len() != SYNAPSE_TABLES.len() {
            return Err(format!("{what} is not Synapse's database"));
        }
        Ok(db)
    }

    /// All rows of a query (`$1`, `$2`… for the parameters, each text; cast where a number
    /// is meant).
    pub(super) fn rows(&self, sql: &str, params: &[&str]) -> Result<Vec<Row>, String> {
        match self {
            Self::Sqlite(conn) => sqlite_rows(conn, sql, params),
            Self::Postgres(pg) => pg.rows(sql, params),
        }
    }

    pub(super) fn has_column(&self, table: &str, column: &str) -> bool {
        let sql = match self {
            Self::Sqlite(_) => "SELECT 1 FROM pragma_table_info($1) WHERE name = $2",
            Self::Postgres(_) => {
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
            }
        };
        self.rows(sql, &[table, column])
            .is_ok_and(|rows| !rows.is_empty())
    }

    pub(super) fn count(&self, sql: &str) -> u64 {
        self.rows(sql, &[])
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r[0].int()))
            .unwrap_or(0) as u64
    }
}

fn sqlite_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[&str],
) -> Result<Vec<Row>, String> {
    let mut statement = conn
        .prepare_cached(sql)
        .map_err(|e| format!("{e} in {sql}"))?;
    let columns = statement.column_count();
    let mut rows = statement
        .query(rusqlite::params_from_iter(params.iter()))
        .map_err(|e| format!("{e} in {sql}"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| format!("{e} in {sql}"))? {
        let mut cells = Vec::with_capacity(columns);
        for i in 0..columns {
            use rusqlite::types::ValueRef;
            cells.push(match row.get_ref(i).map_err(|e| e.to_string())? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(i) => Cell::Int(i),
                ValueRef::Real(f) => Cell::Text(f.to_string()),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
            });
        }
        out.push(cells);
    }
    Ok(out)
}

type PgRequest = (
    String,
    Vec<String>,
    std::sync::mpsc::Sender<Result<Vec<Row>, String>>,
);

/// A PostgreSQL connection in one read-only, repeatable-read transaction (one consistent
/// picture of the database however long the import takes), served by its own thread.
pub(super) struct PgConnection {
    requests: std::sync::mpsc::Sender<PgRequest>,
}

impl PgConnection {
    fn open(config: &postgres::Config) -> Result<Self, String> {
        let config = config.clone();
        let (requests, incoming) = std::sync::mpsc::channel::<PgRequest>();
        let (ready, opened) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("synapse-postgres".into())
            .spawn(move || {
                let client = config
                    .connect(postgres::NoTls)
                    .map_err(|e| format!("cannot connect to Synapse's PostgreSQL: {e}"))
                    .and_then(|mut client| {
                        client
                            .batch_execute(
                                "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
                            )
                            .map_err(|e| format!("Synapse's PostgreSQL: {e}"))?;
                        Ok(client)
                    });
                let mut client = match client {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                for (sql, params, answer) in incoming {
                    let _ = answer.send(pg_rows(&mut client, &sql, &params));
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        opened
            .recv()
            .map_err(|_| "the PostgreSQL thread ended".to_owned())??;
        Ok(Self { requests })
    }

    fn rows(&self, sql: &str, params: &[&str]) -> Result<Vec<Row>, String> {
        let (answer, answered) = std::sync::mpsc::channel();
        let params = params.iter().map(|p| (*p).to_owned()).collect();
        self.requests
            .send((sql.to_owned(), params, answer))
            .map_err(|_| "the PostgreSQL connection is gone".to_owned())?;
        answered
            .recv()
            .map_err(|_| "the PostgreSQL connection is gone".to_owned())?
    }
}

fn pg_rows(
    client: &mut postgres::Client,
    sql: &str,
    params: &[String],
) -> Result<Vec<Row>, String> {
    use postgres::types::Type;
    let typed: Vec<(&(dyn postgres::types::ToSql + Sync), Type)> = params
        .iter()
        .map(|p| (p as &(dyn postgres::types::ToSql + Sync), Type::TEXT))
        .collect();
    let rows = client
        .query_typed(sql, &typed)
        .map_err(|e| format!("{e} in {sql}"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut cells = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let kind = column.type_();
            let cell = if *kind == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)
                    .ok()
                    .flatten()
                    .map(|b| Cell::Int(b.into()))
            } else if *kind == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)
                    .ok()
                    .flatten()
                    .map(|v| Cell::Int(v.into()))
            } else if *kind == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)
                    .ok()
                    .flatten()
                    .map(|v| Cell::Int(v.into()))
            } else if *kind == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)
                    .ok()
                    .flatten()
                    .map(Cell::Int)
            } else if *kind == Type::BYTEA {
                row.try_get::<_, Option<Vec<u8>>>(i)
                    .ok()
                    .flatten()
                    .map(Cell::Bytes)
            } else if *kind == Type::FLOAT8 {
                row.try_get::<_, Option<f64>>(i)
                    .ok()
                    .flatten()
                    .map(|f| Cell::Text(f.to_string()))
            } else {
                match row.try_get::<_, Option<String>>(i) {
                    Ok(text) => text.map(Cell::Text),
                    Err(e) => return Err(format!("column {} of {sql}: {e}", column.name())),
                }
            };
            cells.push(cell.unwrap_or(Cell::Null));
        }
        out.push(cells);
    }
    Ok(out)
}

pub(super) fn user(cell: &Cell) -> Option<OwnedUserId> {
    cell.text().and_then(|u| UserId::parse(u).ok())
}

/// An `event_json` row as the PDU its server signed: without what Synapse keeps in
/// `unsigned`, and without the event ID except in room versions 1 and 2 (format 1), whose
/// events carry it.
pub(super) fn synapse_pdu(json: &Cell, format: &Cell) -> Option<CanonicalJsonObject> {
    let value = json.json()?;
    let mut pdu: CanonicalJsonObject = serde_json::from_value(value).ok()?;
    pdu.remove("unsigned");
    if format.int().unwrap_or(1) != 1 {
        pdu.remove("event_id");
    }
    Some(pdu)
}
