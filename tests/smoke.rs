mod common;

#[test]
fn default_config_parses() {
    sis_gateway::config::Config::dev_default("http://127.0.0.1:3000");
}
