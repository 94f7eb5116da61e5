//! Reading Synapse: its config files, its signing key, its SQLite database.

use super::*;

/// What the import needs of Synapse's configuration.
pub(super) struct SynapseSettings {
    pub(super) server_name: OwnedServerName,
    pub(super) database: PathBuf,
    pub(super) media_store: Option<PathBuf>,
    /// The first signing key: (version, 32-byte seed).
    pub(super) signing_key: (String, Vec<u8>),
    pub(super) pepper: String,
    pub(super) appservice_files: Vec<String>,
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
        Some(path) => path.clone(),
        None => {
            let database = if config["database"].is_object() {
                &config["database"]
            } else {
                &config["databases"]["main"]
            };
            match database["name"].as_str() {
                Some("sqlite3") | None if database["args"]["database"].is_string() => {
                    PathBuf::from(database["args"]["database"].as_str().unwrap_or_default())
                }
                None if config["database_path"].is_string() => {
                    PathBuf::from(config["database_path"].as_str().unwrap_or_default())
                }
                Some("psycopg2") => {
                    return Err(
                        "Synapse's database is PostgreSQL: this culvert imports SQLite databases only so far"
                            .into(),
                    );
                }
                _ => return Err("Synapse's config names no database".into()),
            }
        }
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
    })
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
pub(super) struct SynapseDb {
    conn: rusqlite::Connection,
}

impl SynapseDb {
    pub(super) fn open(path: &Path) -> Result<Self, String> {
        if !path.is_file() {
            return Err(format!("{} is no file", path.display()));
        }
        // Read-only; a write-ahead log left by a stopped Synapse is read as part of the
        // database (never `immutable`, which would ignore it).
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let db = Self { conn };
        let tables = db
            .rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'event_json', 'state_groups_state')",
                &[],
            )
            .map_err(|e| format!("{} is no SQLite database: {e}", path.display()))?;
        if tables.len() != 3 {
            return Err(format!(
                "{} is an SQLite database, but not Synapse's",
                path.display()
            ));
        }
        Ok(db)
    }

    /// All rows of a query (`$1`, `$2`… for the parameters).
    pub(super) fn rows(&self, sql: &str, params: &[&str]) -> Result<Vec<Row>, String> {
        let mut statement = self
            .conn
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

    pub(super) fn has_column(&self, table: &str, column: &str) -> bool {
        self.rows(
            "SELECT 1 FROM pragma_table_info($1) WHERE name = $2",
            &[table, column],
        )
        .is_ok_and(|rows| !rows.is_empty())
    }

    pub(super) fn count(&self, sql: &str) -> u64 {
        self.rows(sql, &[])
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r[0].int()))
            .unwrap_or(0) as u64
    }
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
