//! Interop with a real Synapse (set up in `synapse.rs`): media both ways, knocking on a
//! Synapse room, and culvert's public rooms and space hierarchy as a Synapse user sees them.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{eventually, timeline_has, urlencode},
    synapse::{synapse_and_culvert, synapse_state},
};

/// Uploads on Synapse (or culvert: same API) and returns the media ID.
pub(crate) async fn upload_media(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    bytes: Vec<u8>,
    content_type: &str,
    filename: &str,
) -> String {
    let response = http
        .post(format!(
            "{base}/_matrix/media/v3/upload?filename={}",
            urlencode(filename)
        ))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "upload: {body}");
    let mxc = body["content_uri"].as_str().expect("content_uri");
    mxc.rsplit('/').next().unwrap().to_owned()
}

/// An authenticated v1 download: status, content type, content disposition and bytes.
pub(crate) async fn download_media(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> (StatusCode, String, String, Vec<u8>) {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("download sent");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    let status = response.status();
    (
        status,
        content_type,
        disposition,
        response.bytes().await.unwrap().to_vec(),
    )
}

fn test_png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 40, 255])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_crosses_culvert_and_synapse_both_ways() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };

    // Synapse's media, downloaded by a culvert user through culvert (federation media
    // endpoint, multipart answer), then served again from culvert's store.
    let synapse_image = test_png(300, 200);
    let synapse_id = upload_media(
        &synapse.http,
        &synapse.base,
        &sam.token,
        synapse_image.clone(),
        "image/png",
        "from-synapse.png",
    )
    .await;
    let path = format!(
        "/_matrix/client/v1/media/download/{}/{synapse_id}",
        synapse.server_name
    );
    let (status, content_type, disposition, bytes) =
        download_media(&culvert.http, &culvert.base, &alice.token, &path).await;
    assert_eq!(status, StatusCode::OK, "{}", synapse.log_tail());
    assert!(bytes == synapse_image);
    assert_eq!(content_type, "image/png");
    assert!(disposition.contains("from-synapse.png"), "{disposition}");
    let stored = culvert
        .services()
        .media
        .get(
            &ruma::ServerName::parse(&synapse.server_name).unwrap(),
            &synapse_id,
        )
        .unwrap();
    assert!(stored.is_some(), "culvert stored Synapse's media");
    let (status, _, _, thumb) = download_media(
        &culvert.http,
        &culvert.base,
        &alice.token,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}/{synapse_id}?width=32&height=32&method=crop",
            synapse.server_name
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let size = image::ImageReader::new(std::io::Cursor::new(&thumb))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    assert_eq!(size, (32, 32));

    // culvert's media, downloaded by a Synapse user through Synapse (which asks culvert's
    // federation media endpoint).
    let text = b"Hello from culvert media\n".to_vec();
    let culvert_id = upload_media(
        &culvert.http,
        &culvert.base,
        &alice.token,
        text.clone(),
        "text/plain",
        "from-culvert.txt",
    )
    .await;
    let (status, content_type, disposition, bytes) = download_media(
        &synapse.http,
        &synapse.base,
        &sam.token,
        &format!(
            "/_matrix/client/v1/media/download/{}/{culvert_id}",
            culvert.server_name()
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        String::from_utf8_lossy(&bytes),
        synapse.log_tail()
    );
    assert!(bytes == text);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(disposition.contains("from-culvert.txt"), "{disposition}");
    let culvert_image = test_png(400, 300);
    let image_id = upload_media(
        &culvert.http,
        &culvert.base,
        &alice.token,
        culvert_image.clone(),
        "image/png",
        "culvert.png",
    )
    .await;
    let (status, _, _, bytes) = download_media(
        &synapse.http,
        &synapse.base,
        &sam.token,
        &format!(
            "/_matrix/client/v1/media/download/{}/{image_id}",
            culvert.server_name()
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", synapse.log_tail());
    assert!(bytes == culvert_image);
    let (status, content_type, _, thumb) = download_media(
        &synapse.http,
        &synapse.base,
        &sam.token,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}/{image_id}?width=64&height=64&method=scale",
            culvert.server_name()
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", synapse.log_tail());
    assert!(content_type.starts_with("image/"), "{content_type}");
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(&thumb))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    // Synapse picks one of its configured sizes (made from the fetched original): smaller
    // than the original, same aspect ratio.
    assert!(w < 400 && w * 3 == h * 4, "{w}x{h}");

    // Both went through the authenticated federation media endpoint (no legacy fallback):
    // Synapse served culvert's request for its media and asked culvert's for culvert's.
    let log = std::fs::read_to_string(synapse.dir.path().join("homeserver.log")).unwrap();
    assert!(
        log.contains(&format!(
            "/_matrix/federation/v1/media/download/{synapse_id}"
        )),
        "culvert did not use Synapse's federation media endpoint"
    );
    assert!(
        log.contains(&format!(
            "/_matrix/federation/v1/media/download/{culvert_id}"
        )),
        "Synapse did not use culvert's federation media endpoint"
    );
    assert!(!log.contains(&format!(
        "/_matrix/media/v3/download/{}",
        synapse.server_name
    )));

    // Media neither server has: 404 both ways.
    let (status, _, _, _) = download_media(
        &culvert.http,
        &culvert.base,
        &alice.token,
        &format!(
            "/_matrix/client/v1/media/download/{}/nosuchmedia",
            synapse.server_name
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _, _) = download_media(
        &synapse.http,
        &synapse.base,
        &sam.token,
        &format!(
            "/_matrix/client/v1/media/download/{}/nosuchmedia",
            culvert.server_name()
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_culvert_user_knocks_on_a_synapse_room_and_is_let_in() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };
    let (status, body) = synapse
        .post(
            "/_matrix/client/v3/createRoom",
            &sam,
            json!({
                "preset": "private_chat", "room_version": "12", "name": "Knock at Synapse",
                "initial_state": [{
                    "type": "m.room.join_rules", "state_key": "",
                    "content": { "join_rule": "knock" }
                }]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();

    // Alice knocks from culvert through Synapse; her /sync shows the knock.
    let (status, body) = culvert
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                urlencode(&room),
                urlencode(&synapse.server_name)
            ),
            Some(&alice.token),
            json!({ "reason": "may I?" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    culvert
        .sync_until(&alice, "her knock", |b| {
            b["rooms"]["knock"][&room]["knock_state"]["events"]
                .as_array()
                .is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "m.room.name" && e["content"]["name"] == "Knock at Synapse"
                    })
                })
        })
        .await;

    // Sam sees the knock, and invites her.
    eventually("Synapse sees alice's knock", || async {
        synapse_state(&synapse, &sam, &room, "m.room.member", &alice.user_id).await["membership"]
            == "knock"
    })
    .await;
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            &sam,
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    culvert
        .sync_until(&alice, "the invite", |b| {
            b["rooms"]["invite"][&room].is_object()
        })
        .await;

    // Alice joins; both servers agree, and they talk.
    let (status, body) = culvert
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    eventually("Synapse sees alice joined", || async {
        synapse_state(&synapse, &sam, &room, "m.room.member", &alice.user_id).await["membership"]
            == "join"
    })
    .await;
    synapse.say(&sam, &room, "welcome in").await;
    culvert
        .sync_until(&alice, "sam's welcome", |b| {
            timeline_has(b, &room, "welcome in")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_lists_culverts_public_rooms_and_reads_its_space() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };
    let listed = culvert
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "visibility": "public", "name": "Listed on culvert" }),
        )
        .await;

    let (status, body) = synapse
        .get(
            &format!(
                "/_matrix/client/v3/publicRooms?server={}",
                urlencode(&culvert.server_name())
            ),
            &sam,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    let chunk = body["chunk"].as_array().expect("chunk");
    assert!(
        chunk
            .iter()
            .any(|r| r["room_id"] == listed.as_str() && r["name"] == "Listed on culvert"),
        "{body}"
    );

    // A space on culvert whose child Synapse does not take part in: Synapse asks culvert's
    // /hierarchy for the child.
    let space = culvert
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Culvert space",
                    "creation_content": { "type": "m.space" } }),
        )
        .await;
    let (status, body) = culvert
        .put(
            &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{listed}"),
            Some(&alice.token),
            json!({ "via": [culvert.server_name()] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = synapse
        .post(
            &format!(
                "/_matrix/client/v3/join/{space}?via={}",
                urlencode(&culvert.server_name())
            ),
            &sam,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    let (status, body) = synapse
        .get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy"), &sam)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    let rooms = body["rooms"].as_array().expect("rooms");
    assert!(
        rooms
            .iter()
            .any(|r| r["room_id"] == listed.as_str() && r["name"] == "Listed on culvert"),
        "{body}"
    );
}
