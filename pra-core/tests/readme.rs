//! The README's diagram of the plan is what `plan::mermaid` draws from the plan's table: a
//! changed table with a stale README fails here. `PRA_BLESS_README=1` (or `make readme`)
//! rewrites the diagram in place; commit the README.

use std::path::Path;

use pra_core::Topology;
use pra_core::plan;

const BEGIN: &str = "<!-- plan diagram: drawn by pra_core::plan::mermaid from the plan's table; `make readme` -->\n";
const END: &str = "<!-- end of plan diagram -->\n";

#[test]
fn readme_diagram_is_the_plan_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = readme
        .split_once(BEGIN)
        .expect("README.md has the plan diagram's begin marker");
    let (_, tail) = rest
        .split_once(END)
        .expect("README.md has the plan diagram's end marker");
    let diagram = plan::mermaid(&Topology::parse("rbx,sbg").unwrap());
    let fresh = format!("{head}{BEGIN}```mermaid\n{diagram}```\n{END}{tail}");
    if std::env::var_os("PRA_BLESS_README").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    assert!(
        readme == fresh || std::env::var_os("PRA_BLESS_README").is_some(),
        "README.md's plan diagram is stale: run `make readme` and commit it"
    );
}
