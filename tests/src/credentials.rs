//! The credentials every test server is started with (in process and as a child process), and
//! tokens signed with them.

use chorus_core::auth::TokenAuthority;

pub const JWT_SECRET: &str = "chorus-test-secret-0123456789";
pub const API_KEY: &str = "chorus-test-api-key";

/// Signs a token for `user` with the test secret.
pub fn token(user: &str, device: Option<&str>) -> String {
    TokenAuthority::new(JWT_SECRET.as_bytes())
        .issue(user, device, 3600)
        .expect("valid user")
}
