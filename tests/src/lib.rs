//! End-to-end tests of Tenantsync. The harness lives in `sync_testkit`; scenario
//! helpers shared by several test files live here.

pub use sync_testkit::*;

pub mod browser;
pub mod nginx;
pub mod oidc;
pub mod otlp;
pub mod replicas;
pub mod suite;
pub mod wrapper_app;

/// Fail unless every scheduled time among `runs` (an app's recorded full syncs) ran once.
pub fn assert_each_scheduled_time_ran_once(app: &str, runs: &[sync_sdk::fullsync::FullSyncRun]) {
    let mut times: Vec<_> = runs.iter().map(|r| r.scheduled_for).collect();
    times.sort();
    times.dedup();
    assert_eq!(
        times.len(),
        runs.len(),
        "{app}: a scheduled full sync ran twice: {runs:?}"
    );
}

/// A custom domain served on loopback for the wrapper's domain challenge: it answers
/// `/.well-known/tenantsync-challenge/{token}` with the token once the test has put it in the
/// returned slot, 404 before. Point `WRAPPER_DOMAIN_CHALLENGE_ADDR` at the server's address.
pub async fn challenge_server()
-> anyhow::Result<(TestServer, std::sync::Arc<std::sync::Mutex<Option<String>>>)> {
    use axum::{extract::Path, http::StatusCode, routing::get};
    let served: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let token_served = served.clone();
    let server = serve(axum::Router::new().route(
        "/.well-known/tenantsync-challenge/{token}",
        get(move |Path(token): Path<String>| {
            let served = token_served.lock().unwrap().clone();
            async move {
                match served {
                    Some(t) if t == token => (StatusCode::OK, t),
                    _ => (StatusCode::NOT_FOUND, String::new()),
                }
            }
        }),
    ))
    .await?;
    Ok((server, served))
}

/// `(collection, documents)` of every collection of MongoDB database `name` with a document
/// holding `needle`.
pub async fn mongo_docs_with(name: &str, needle: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let client = mongodb::Client::with_uri_str(crate::mongodb_url()).await?;
    let db = client.database(name);
    let mut found = Vec::new();
    for collection in db.list_collection_names().await? {
        let mut cursor = db
            .collection::<mongodb::bson::Document>(&collection)
            .find(mongodb::bson::doc! {})
            .await?;
        let mut hits = 0;
        while cursor.advance().await? {
            let doc = cursor.deserialize_current()?;
            if doc
                .to_string()
                .to_lowercase()
                .contains(&needle.to_lowercase())
            {
                hits += 1;
            }
        }
        if hits > 0 {
            found.push((collection, hits));
        }
    }
    Ok(found)
}

/// The files of a tar archive, by path.
pub fn untar(bytes: &[u8]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut files = std::collections::BTreeMap::new();
    let mut reader = tar::Archive::new(bytes);
    for entry in reader.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text)?;
        files.insert(path, text);
    }
    Ok(files)
}
