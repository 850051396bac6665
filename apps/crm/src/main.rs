//! CRM example app (built in a later issue on sync-sdk).
fn main() {
    eprintln!("crm: not built yet; see the README");
}
