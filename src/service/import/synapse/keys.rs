//! End-to-end encryption: device, one-time, fallback and cross-signing keys with their
//! signatures, key backups, pending to-device messages.

use super::*;

impl Import<'_> {
    pub(super) async fn e2ee(&self, report: &mut ImportReport) -> Result<(), StartError> {
        let local = format!("%:{}", self.settings.server_name);
        let db = |sql: &str, params: &[&str]| self.db.rows(sql, params).map_err(StartError::Other);
        // Devices' identity keys with their one-time and fallback keys.
        for row in db(
            "SELECT user_id, device_id, key_json FROM e2e_device_keys_json WHERE user_id LIKE $1",
            &[&local],
        )? {
            let (Some(user_id), Some(device), Some(keys)) =
                (user(&row[0]), row[1].text(), row[2].json())
            else {
                continue;
            };
            let keyed = |sql: &str| -> Result<Vec<(String, Value)>, StartError> {
                Ok(db(sql, &[user_id.as_str(), &device])?
                    .iter()
                    .filter_map(|k| {
                        Some((format!("{}:{}", k[0].text()?, k[1].text()?), k[2].json()?))
                    })
                    .collect())
            };
            let one_time_keys = keyed(
                "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys_json WHERE user_id = $1 AND device_id = $2",
            )?;
            let fallback_keys = keyed(
                "SELECT algorithm, key_id, key_json FROM e2e_fallback_keys_json WHERE user_id = $1 AND device_id = $2",
            )?;
            let count = one_time_keys.len() as u64;
            if let Some(services) = self.services {
                if services
                    .devices
                    .get(&user_id, device.as_str().into())?
                    .is_none()
                {
                    report.skip(format!(
                        "{user_id}'s keys of device {device}: no such device"
                    ));
                    continue;
                }
                let upload = crate::service::e2ee::KeyUpload {
                    device_keys: Some(keys),
                    one_time_keys,
                    fallback_keys,
                };
                if let Err(e) = services
                    .upload_keys(&user_id, device.as_str().into(), upload)
                    .await
                {
                    report.skip(format!("{user_id}'s device {device} keys: {e}"));
                    continue;
                }
            }
            report.count("device keys");
            *report.counts.entry("one-time keys").or_default() += count;
        }

        // Cross-signing keys: each user's newest of each kind, then the signatures users made
        // with them (of their devices, of their master key, of others' master keys).
        let mut signing: BTreeMap<OwnedUserId, [Option<Value>; 3]> = BTreeMap::new();
        for row in db(
            "SELECT k.user_id, k.keytype, k.keydata FROM e2e_cross_signing_keys k \
             WHERE k.user_id LIKE $1 AND k.stream_id = (SELECT MAX(stream_id) FROM e2e_cross_signing_keys l WHERE l.user_id = k.user_id AND l.keytype = k.keytype)",
            &[&local],
        )? {
            let (Some(user_id), Some(kind), Some(key)) =
                (user(&row[0]), row[1].text(), row[2].json())
            else {
                continue;
            };
            let at = match kind.as_str() {
                "master" => 0,
                "self_signing" => 1,
                "user_signing" => 2,
                _ => continue,
            };
            signing.entry(user_id).or_default()[at] = Some(key);
        }
        for (user_id, keys) in signing {
            import_signing_keys(self.services, &user_id, keys, report).await?;
        }
        for row in db(
            "SELECT user_id, key_id, target_user_id, target_device_id, signature FROM e2e_cross_signing_signatures WHERE user_id LIKE $1",
            &[&local],
        )? {
            let (Some(signer), Some(key_id), Some(target), Some(target_key), Some(signature)) = (
                user(&row[0]),
                row[1].text(),
                user(&row[2]),
                row[3].text(),
                row[4].text(),
            ) else {
                continue;
            };
            let Some(services) = self.services else {
                report.count("cross-signing signatures");
                continue;
            };
            // The signed key as it is stored here now, with this signature added.
            let keys =
                services.query_keys(&signer, &BTreeMap::from([(target.clone(), Vec::new())]))?;
            let target_str = target.as_str();
            let mut object = keys["device_keys"][target_str][&target_key].clone();
            if object.is_null() {
                object = keys["master_keys"][target_str].clone();
            }
            if object.is_null() {
                report.skip(format!(
                    "{signer}'s signature of {target}'s {target_key}: the key is not here"
                ));
                continue;
            }
            object["signatures"][signer.as_str()][&key_id] = Value::String(signature);
            if let Some(object) = object.as_object_mut() {
                object.remove("unsigned");
            }
            let failures = services
                .upload_signatures(&signer, vec![(target.clone(), target_key.clone(), object)])
                .await?;
            if failures["failures"]
                .as_object()
                .is_some_and(|f| !f.is_empty())
            {
                report.skip(format!(
                    "{signer}'s signature of {target}'s {target_key}: {failures}"
                ));
                continue;
            }
            report.count("cross-signing signatures");
        }

        // Key backups, oldest version first (sessions go into the version that is current).
        for row in db(
            "SELECT user_id, version, algorithm, auth_data FROM e2e_room_keys_versions WHERE deleted = 0 AND user_id LIKE $1 ORDER BY user_id, version",
            &[&local],
        )? {
            let (Some(user_id), Some(version), Some(algorithm), Some(auth_data)) =
                (user(&row[0]), row[1].text(), row[2].text(), row[3].json())
            else {
                continue;
            };
            let sessions: Vec<(String, String, Value)> = db(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM e2e_room_keys WHERE user_id = $1 AND version = CAST($2 AS BIGINT)",
                &[user_id.as_str(), &version],
            )?
            .iter()
            .filter_map(|s| {
                Some((
                    s[0].text()?,
                    s[1].text()?,
                    json!({
                        "first_message_index": s[2].int()?,
                        "forwarded_count": s[3].int()?,
                        "is_verified": s[4].flag(),
                        "session_data": s[5].json()?,
                    }),
                ))
            })
            .collect();
            let count = sessions.len() as u64;
            if let Some(services) = self.services {
                let body = json!({ "algorithm": algorithm, "auth_data": auth_data });
                let imported = services
                    .import_backup_version(&user_id, &version, &body)
                    .and_then(|()| {
                        if sessions.is_empty() {
                            Ok(Value::Null)
                        } else {
                            services.put_backup_keys(&user_id, &version, sessions)
                        }
                    });
                if let Err(e) = imported {
                    report.skip(format!("{user_id}'s key backup {version}: {e}"));
                    continue;
                }
            }
            report.count("key backups");
            *report.counts.entry("key backup sessions").or_default() += count;
        }

        // To-device messages not yet delivered, in their order.
        for row in db(
            "SELECT user_id, device_id, stream_id, message_json FROM device_inbox WHERE user_id LIKE $1 ORDER BY stream_id",
            &[&local],
        )? {
            let (Some(user_id), Some(device), Some(stream_id), Some(message)) =
                (user(&row[0]), row[1].text(), row[2].int(), row[3].json())
            else {
                continue;
            };
            let (Some(sender), Some(kind)) = (
                message["sender"]
                    .as_str()
                    .and_then(|s| UserId::parse(s).ok()),
                message["type"].as_str(),
            ) else {
                continue;
            };
            if let Some(services) = self.services {
                let message = crate::service::e2ee::ToDeviceMessage {
                    user_id: user_id.clone(),
                    device_id: Some(device.as_str().into()),
                    content: message["content"].clone(),
                };
                let txn_id = format!("culvert-import-{stream_id}-{user_id}-{device}");
                services
                    .send_to_device(&sender, "IMPORTED".into(), kind, &txn_id, vec![message])
                    .await?;
            }
            report.count("to-device messages");
        }
        Ok(())
    }
}
