//! The rule engine: conditions in CEL (the Common Expression Language, as used by Kubernetes
//! admission policies and Envoy), compiled once, evaluated per event against the event, the
//! user's cart and the declared features.
//!
//! CEL fits: it is side-effect free, always terminates, and has a spec users can read. A
//! rule set is checked as a whole before it replaces the running one — syntax, unknown names
//! and type errors — so a bad edit never takes detection down.

use super::features::FeatureKey;
use cartpulse_model::Action;
use cel::common::ast::Expr;
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, IdedExpr, Program, Value};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Who an alert is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    #[default]
    Risk,
    Marketing,
    Inventory,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Risk => "risk",
            RuleKind::Marketing => "marketing",
            RuleKind::Inventory => "inventory",
        }
    }
}

/// What a rule fires on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Every accepted event (narrowed by `actions`).
    #[default]
    Event,
    /// A cart reported abandoned (its owner went quiet; fired on processing time when the
    /// source is idle).
    Abandoned,
}

fn default_cooldown() -> Duration {
    Duration::from_secs(600)
}

fn yes() -> bool {
    true
}

/// A rule as declared in config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// A CEL expression over the variables listed in `VARIABLES` and the declared features;
    /// the rule fires when it is `true`.
    pub condition: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub kind: RuleKind,
    #[serde(default)]
    pub on: Trigger,
    /// Only these actions are evaluated (all when empty).
    #[serde(default)]
    pub actions: Vec<Action>,
    /// The entity the alert is about; one alert per entity per `cooldown`.
    #[serde(default = "default_key")]
    pub key: FeatureKey,
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// Where alerts go: output stream names (`alerts`) or sink names.
    #[serde(default = "default_outputs")]
    pub outputs: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
}

fn default_key() -> FeatureKey {
    FeatureKey::User
}

fn default_outputs() -> Vec<String> {
    vec!["alerts".into()]
}

/// The type of a variable, used for checking rules before they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarType {
    Str,
    Int,
    Float,
    Bool,
}

/// Variables every rule may use besides the declared features: (name, type, meaning).
pub const VARIABLES: &[(&str, VarType, &str)] = &[
    (
        "action",
        VarType::Str,
        "view, add, remove, update_qty, checkout; `abandoned` for abandoned-cart rules",
    ),
    ("user_id", VarType::Str, "the user"),
    (
        "session_id",
        VarType::Str,
        "the session (empty when absent)",
    ),
    ("sku", VarType::Str, "the product (empty when absent)"),
    (
        "category",
        VarType::Str,
        "the product's category (event or catalogue)",
    ),
    ("device_id", VarType::Str, "device (empty when absent)"),
    (
        "brand",
        VarType::Str,
        "the product's brand from [enrich.products] (empty when unknown)",
    ),
    (
        "segment",
        VarType::Str,
        "the user's segment from [enrich.users] (empty when unknown)",
    ),
    (
        "region",
        VarType::Str,
        "the user's region from [enrich.users] (empty when unknown)",
    ),
    ("ip", VarType::Str, "client address (empty when absent)"),
    ("qty", VarType::Int, "quantity as applied"),
    ("price", VarType::Float, "unit price as applied"),
    ("value", VarType::Float, "qty × price"),
    ("ts", VarType::Int, "event time, epoch ms"),
    ("hour", VarType::Int, "hour of day of the event (UTC), 0-23"),
    ("late", VarType::Bool, "arrived too late for its window"),
    (
        "cart_items",
        VarType::Int,
        "items in the user's cart after the event",
    ),
    (
        "cart_value",
        VarType::Float,
        "value of the user's cart after the event",
    ),
    ("cart_lines", VarType::Int, "distinct products in the cart"),
    (
        "line_qty",
        VarType::Int,
        "the user's quantity of this product after the event",
    ),
    ("order_value", VarType::Float, "cart value at checkout"),
    ("orders", VarType::Int, "orders the user placed so far"),
    (
        "held_total",
        VarType::Int,
        "quantity of this product in all carts",
    ),
    (
        "stock",
        VarType::Int,
        "the product's stock from the catalogue (-1 when unknown)",
    ),
    (
        "held_share",
        VarType::Float,
        "line_qty / stock (0 when stock unknown)",
    ),
    (
        "held_total_share",
        VarType::Float,
        "held_total / stock (0 when stock unknown)",
    ),
    (
        "price_prev",
        VarType::Float,
        "the product's previous known price (0 when none)",
    ),
    (
        "price_change_pct",
        VarType::Float,
        "price change vs the previous known price, percent",
    ),
    (
        "quiet_ms",
        VarType::Int,
        "abandoned carts: how long the user has been quiet",
    ),
    (
        "intent",
        VarType::Float,
        "purchase-intent score of the user's cart, 0-1 (see GET /api/intent)",
    ),
];

/// A rule that failed to compile or check, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule `{rule}`{}: {why}", at.map(|(l, c)| format!(" at line {l}, column {c}")).unwrap_or_default())]
pub struct RuleError {
    pub rule: String,
    pub at: Option<(usize, usize)>,
    pub why: String,
}

pub struct CompiledRule {
    pub spec: RuleSpec,
    program: Program,
    /// Variable ids the condition reads: the alert's evidence.
    pub reads: Vec<usize>,
}

/// Names → ids for the variables a rule set may read (built-ins, then features).
#[derive(Clone, Debug)]
pub struct VarTable {
    pub names: Vec<String>,
    pub types: Vec<VarType>,
    index: HashMap<String, usize>,
}

impl VarTable {
    pub fn new(features: &[(String, VarType)]) -> VarTable {
        let mut names = Vec::new();
        let mut types = Vec::new();
        for (n, t, _) in VARIABLES {
            names.push(n.to_string());
            types.push(*t);
        }
        for (n, t) in features {
            names.push(n.clone());
            types.push(*t);
        }
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        VarTable {
            names,
            types,
            index,
        }
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Per-event values, by variable id.
pub struct Values<'a> {
    pub table: &'a VarTable,
    pub vals: &'a [Value],
}

impl VariableResolver for Values<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let id = self.table.id(variable)?;
        let v: Box<dyn cel::common::value::Val> = self.vals[id].clone().try_into().ok()?;
        Some(CowVal::Owned(v))
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

fn sample(t: VarType) -> Value {
    match t {
        VarType::Str => Value::String(Arc::new("x".into())),
        VarType::Int => Value::Int(1),
        VarType::Float => Value::Float(1.5),
        VarType::Bool => Value::Bool(true),
    }
}

/// Every call in the expression, so each can be type-checked on its own: evaluating only the
/// whole condition would miss an error hidden behind a short-circuiting `&&`.
fn calls<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
    match &e.expr {
        Expr::Call(c) => {
            // innermost first, so an error is reported where it is, not at an enclosing `&&`
            if let Some(t) = &c.target {
                calls(t, out);
            }
            for a in &c.args {
                calls(a, out);
            }
            out.push(e);
        }
        Expr::List(l) => l.elements.iter().for_each(|x| calls(x, out)),
        Expr::Select(s) => calls(&s.operand, out),
        // comprehension bodies use loop variables only bound at run time
        _ => {}
    }
}

impl CompiledRule {
    pub fn compile(spec: RuleSpec, table: &VarTable, env: &Arc<Env>) -> Result<Self, RuleError> {
        let err = |at, why: String| RuleError {
            rule: spec.name.clone(),
            at,
            why,
        };
        if spec.name.trim().is_empty() {
            return Err(err(None, "a rule needs a name".into()));
        }
        let program = env.compile(&spec.condition).map_err(|e| {
            let first = e.errors.first();
            let at = first.map(|p| (p.pos.0.max(1) as usize, p.pos.1.max(0) as usize + 1));
            let why = first.map_or_else(|| e.to_string(), |p| p.msg.clone());
            err(at, format!("syntax error: {why}"))
        })?;
        let src = &spec.condition;
        let pos = |id: u64| {
            program
                .source_info()
                .offset_for(id)
                .map(|(s, _)| line_col(src, s as usize))
        };
        // names: every identifier must be a known variable (macros bind their own)
        let mut reads = Vec::new();
        let refs = program.references();
        for name in refs.variables() {
            match table.id(name) {
                Some(id) => reads.push(id),
                None if is_bound_by_macro(program.expression(), name) => {}
                None => {
                    return Err(err(
                        None,
                        format!(
                            "unknown variable or feature `{name}` (variables: {}; declare features under [[analytics.features]])",
                            table.names.join(", ")
                        ),
                    ))
                }
            }
        }
        reads.sort_unstable();
        reads.dedup();
        // types: each call evaluated against sample values of the right types
        let vals: Vec<Value> = table.types.iter().map(|&t| sample(t)).collect();
        let values = Values { table, vals: &vals };
        let mut ctx = Context::with_env(env.clone());
        ctx.set_variable_resolver(&values);
        let mut cs = Vec::new();
        calls(program.expression(), &mut cs);
        for c in cs {
            match Value::resolve(c, &ctx) {
                Ok(_)
                | Err(ExecutionError::DivisionByZero(_))
                | Err(ExecutionError::RemainderByZero(_))
                | Err(ExecutionError::UndeclaredReference(_))
                | Err(ExecutionError::NoSuchKey(_))
                | Err(ExecutionError::IndexOutOfBounds(_))
                | Err(ExecutionError::FunctionError { .. }) => {}
                Err(e) => return Err(err(pos(c.id), format!("type error: {e}"))),
            }
        }
        match Value::resolve(program.expression(), &ctx) {
            Ok(Value::Bool(_)) | Err(_) => {}
            Ok(other) => {
                return Err(err(
                    None,
                    format!(
                        "the condition must be a boolean, but it gives {:?}",
                        other.type_of()
                    ),
                ))
            }
        }
        drop(ctx);
        Ok(CompiledRule {
            spec,
            program,
            reads,
        })
    }

    /// Whether the rule fires, or why it could not be evaluated.
    pub fn eval(&self, ctx: &Context) -> Result<bool, ExecutionError> {
        match self.program.execute(ctx)? {
            Value::Bool(b) => Ok(b),
            _ => Ok(false),
        }
    }
}

fn is_bound_by_macro(e: &IdedExpr, name: &str) -> bool {
    match &e.expr {
        Expr::Comprehension(c) => {
            c.iter_var == name
                || c.accu_var == name
                || is_bound_by_macro(&c.loop_step, name)
                || is_bound_by_macro(&c.result, name)
        }
        Expr::Call(c) => {
            c.target
                .as_deref()
                .is_some_and(|t| is_bound_by_macro(t, name))
                || c.args.iter().any(|a| is_bound_by_macro(a, name))
        }
        Expr::Select(s) => is_bound_by_macro(&s.operand, name),
        Expr::List(l) => l.elements.iter().any(|x| is_bound_by_macro(x, name)),
        _ => false,
    }
}

/// A checked set of rules, ready to run.
pub struct RuleSet {
    pub rules: Vec<CompiledRule>,
    pub env: Arc<Env>,
}

impl RuleSet {
    /// Compiles every enabled rule; the first error rejects the whole set.
    pub fn compile(specs: &[RuleSpec], table: &VarTable) -> Result<RuleSet, RuleError> {
        let env = Arc::new(Env::stdlib());
        let mut rules = Vec::new();
        let mut names = hashbrown::HashSet::new();
        for s in specs {
            if !names.insert(s.name.clone()) {
                return Err(RuleError {
                    rule: s.name.clone(),
                    at: None,
                    why: "two rules have this name".into(),
                });
            }
            if s.enabled {
                rules.push(CompiledRule::compile(s.clone(), table, &env)?);
            }
        }
        Ok(RuleSet { rules, env })
    }

    /// Union of the variables any rule reads.
    pub fn reads(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self.rules.iter().flat_map(|r| r.reads.clone()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, cond: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            condition: cond.into(),
            severity: Severity::High,
            kind: RuleKind::Risk,
            on: Trigger::Event,
            actions: vec![],
            key: FeatureKey::User,
            cooldown: Duration::from_secs(60),
            outputs: default_outputs(),
            enabled: true,
            description: String::new(),
        }
    }

    fn table() -> VarTable {
        VarTable::new(&[("device_users_30m".into(), VarType::Int)])
    }

    fn run(
        rule: &CompiledRule,
        set: &RuleSet,
        t: &VarTable,
        f: impl Fn(&str) -> Option<Value>,
    ) -> bool {
        let vals: Vec<Value> = t
            .names
            .iter()
            .zip(&t.types)
            .map(|(n, &ty)| {
                f(n).unwrap_or(match ty {
                    VarType::Str => Value::String(Arc::new(String::new())),
                    VarType::Int => Value::Int(0),
                    VarType::Float => Value::Float(0.0),
                    VarType::Bool => Value::Bool(false),
                })
            })
            .collect();
        let values = Values {
            table: t,
            vals: &vals,
        };
        let mut ctx = Context::with_env(set.env.clone());
        ctx.set_variable_resolver(&values);
        rule.eval(&ctx).unwrap()
    }

    #[test]
    fn evaluates_against_event_and_features() {
        let t = table();
        let set = RuleSet::compile(
            &[spec(
                "farm",
                "action == 'add' && device_users_30m >= 3 && cart_value > 10",
            )],
            &t,
        )
        .unwrap();
        let r = &set.rules[0];
        assert_eq!(r.reads.len(), 3);
        let hit = |n: &str| match n {
            "action" => Some(Value::String(Arc::new("add".into()))),
            "device_users_30m" => Some(Value::Int(4)),
            "cart_value" => Some(Value::Float(12.5)),
            _ => None,
        };
        assert!(run(r, &set, &t, hit));
        let miss = |n: &str| match n {
            "device_users_30m" => Some(Value::Int(2)),
            other => hit(other),
        };
        assert!(!run(r, &set, &t, miss));
    }

    #[test]
    fn macros_bind_their_own_names() {
        let t = table();
        let set = RuleSet::compile(&[spec("m", "['a', 'b'].exists(s, s == sku)")], &t).unwrap();
        assert!(run(&set.rules[0], &set, &t, |n| (n == "sku")
            .then(|| Value::String(Arc::new("b".into())))));
    }

    #[test]
    fn syntax_error_names_rule_and_position() {
        let e = RuleSet::compile(&[spec("broken", "qty >= ")], &table())
            .err()
            .unwrap();
        assert_eq!(e.rule, "broken");
        assert!(e.at.is_some(), "{e}");
        assert!(e.to_string().contains("syntax error"), "{e}");
    }

    #[test]
    fn unknown_feature_is_rejected() {
        let e = RuleSet::compile(&[spec("typo", "device_users_3m >= 3")], &table())
            .err()
            .unwrap();
        assert!(e.why.contains("device_users_3m"), "{e}");
    }

    #[test]
    fn type_errors_are_found_behind_short_circuits() {
        // `action == 'x'` is false for the sample, so only a per-call check sees the error
        let e = RuleSet::compile(&[spec("types", "action == 'x' && qty > 'many'")], &table())
            .err()
            .unwrap();
        assert!(e.why.contains("type error"), "{e}");
        assert_eq!(e.at, Some((1, 22)), "{e}"); // the `>` of `qty > 'many'`
                                                // CEL has no implicit int-to-double arithmetic: caught at load, not per event
        let e = RuleSet::compile(&[spec("mixed", "cart_value + 1 > 2.0")], &table())
            .err()
            .unwrap();
        assert!(e.why.contains("type error"), "{e}");
        let e = RuleSet::compile(&[spec("num", "cart_value + 1.0")], &table())
            .err()
            .unwrap();
        assert!(e.why.contains("boolean"), "{e}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = RuleSet::compile(&[spec("a", "true"), spec("a", "false")], &table())
            .err()
            .unwrap();
        assert!(e.why.contains("two rules"), "{e}");
    }
}
