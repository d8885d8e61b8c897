//! The built-in rule pack (`rules/builtin.toml`, compiled into the binary).

use super::RulesFile;

pub const BUILTIN: &str = include_str!("../../rules/builtin.toml");

pub fn builtin() -> RulesFile {
    RulesFile::parse(BUILTIN).expect("the built-in rule pack parses (tested)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_pack_compiles() {
        let p = super::builtin();
        assert!(p.rules.len() >= 6);
        super::super::CartAnalytics::new(Default::default(), Default::default()).unwrap();
    }
}
