//! Micro-costs of CEL scopes: `cargo run --release -p sluice-processor --example scope_cost`.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cel::objects::{Key, Map};
use cel::{Context, Program, Value};

fn main() {
    let n = 1_000_000;
    let root = Context::default();
    let p = Program::compile("value.total > 0.0").unwrap();
    let t = Instant::now();
    for i in 0..n {
        let mut s = root.new_inner_scope();
        let m: HashMap<Key, Value> = HashMap::from([(
            Key::String(Arc::new("total".to_string())),
            Value::Float(i as f64),
        )]);
        s.add_variable_from_value("value", Value::Map(Map { map: Arc::new(m) }));
        std::hint::black_box(p.execute(&s).unwrap());
    }
    println!(
        "map scope + eval     {:.3} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let t = Instant::now();
    for i in 0..n {
        let mut s = root.new_inner_scope();
        s.add_variable_from_value("value.total", Value::Float(i as f64));
        std::hint::black_box(p.execute(&s).unwrap());
    }
    println!(
        "direct scope + eval  {:.3} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let t = Instant::now();
    for i in 0..n {
        let mut s = root.new_inner_scope();
        let m: HashMap<Key, Value> = HashMap::from([(
            Key::String(Arc::new("total".to_string())),
            Value::Float(i as f64),
        )]);
        s.add_variable_from_value("value", Value::Map(Map { map: Arc::new(m) }));
        std::hint::black_box(&s);
    }
    println!(
        "map scope only       {:.3} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let s = {
        let mut s = root.new_inner_scope();
        s.add_variable_from_value("value.total", Value::Float(1.0));
        s
    };
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(p.execute(&s).unwrap());
    }
    println!(
        "eval only (direct)   {:.3} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
}
