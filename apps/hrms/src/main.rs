//! HRMS example app (built in a later issue on sync-sdk).
fn main() {
    eprintln!("hrms: not built yet; see the README");
}
