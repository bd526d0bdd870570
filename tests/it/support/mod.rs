pub mod gateway;
pub mod redis_server;
