//! `crate-graph`: the picture of the workspace's crates and what each
//! depends on, drawn from `cargo metadata` into `crate-graph.svg` (linked
//! from ARCHITECTURE.md), so that it cannot drift from the code: the
//! deployment test runs `crate-graph --check`.
//!
//! Crates stand in layers: a crate sits one row above the highest crate it
//! depends on, so `faultline-protocol`, which depends on none of ours, is
//! at the bottom, and every arrow points down. Within a row, crates are
//! ordered by where their dependencies stand (the barycentre heuristic),
//! which uncrosses most arrows. An arrow is drawn only where no longer
//! path implies it (the transitive reduction). Only normal dependencies
//! count; what tests use is left out. Binaries are orange, libraries blue.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use faultline_cluster::workspace_root;

/// The picture, beside ARCHITECTURE.md.
const FILE: &str = "crate-graph.svg";

/// Writes the picture, or with `check`, fails if the committed one differs.
pub fn run(check: bool) -> anyhow::Result<ExitCode> {
    let (graph, binaries) = dependencies()?;
    let svg = draw(&place(&reduce(&graph)), &binaries);
    let path = workspace_root().join(FILE);
    if check {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != svg {
            eprintln!("faultline: {FILE} is out of date: run ./faultline crate-graph");
            return Ok(ExitCode::FAILURE);
        }
        println!("faultline: {FILE} matches the crates");
    } else {
        std::fs::write(&path, svg).with_context(|| format!("writing {FILE}"))?;
        println!("faultline: wrote {FILE}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A crate's name and the workspace crates it depends on.
type Graph = BTreeMap<String, Vec<String>>;

/// Each workspace crate that depends on another or is depended on, with
/// the workspace crates it depends on; and which crates build binaries.
fn dependencies() -> anyhow::Result<(Graph, Vec<String>)> {
    let output = Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?;
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let binaries = packages
        .iter()
        .filter(|p| {
            p["targets"].as_array().is_some_and(|targets| {
                targets.iter().any(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "bin"))
                })
            })
        })
        .filter_map(|p| Some(p["name"].as_str()?.to_owned()))
        .collect();
    let graph: Graph = packages
        .iter()
        .filter_map(|package| {
            let dependencies = package["dependencies"]
                .as_array()?
                .iter()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|name| names.contains(name))
                .map(str::to_owned)
                .collect();
            Some((package["name"].as_str()?.to_owned(), dependencies))
        })
        .collect();
    let connected =
        |name: &String| !graph[name].is_empty() || graph.values().any(|deps| deps.contains(name));
    let graph = graph
        .keys()
        .filter(|name| connected(name))
        .map(|name| (name.clone(), graph[name].clone()))
        .collect();
    Ok((graph, binaries))
}

/// The graph without the arrows a longer path implies.
fn reduce(graph: &Graph) -> Graph {
    fn reaches(graph: &Graph, from: &str, to: &str) -> bool {
        graph
            .get(from)
            .is_some_and(|deps| deps.iter().any(|d| d == to || reaches(graph, d, to)))
    }
    graph
        .iter()
        .map(|(name, deps)| {
            let kept = deps
                .iter()
                .filter(|dep| {
                    !deps
                        .iter()
                        .any(|other| other != *dep && reaches(graph, other, dep))
                })
                .cloned()
                .collect();
            (name.clone(), kept)
        })
        .collect()
}

/// One box of the picture, or a bend point of an arrow that skips rows.
#[derive(Debug)]
struct Node {
    /// The crate; `None` for a bend point.
    name: Option<String>,
    layer: usize,
    /// The nodes one row down that its arrows go to.
    down: Vec<usize>,
}

/// The picture's nodes, row by row from the bottom, each row in order.
///
/// A crate's layer is 0 with no workspace dependency, else one above its
/// highest dependency. An arrow that skips rows gets a bend point in each
/// row it crosses, so that it runs between boxes, not through them. Rows
/// are ordered upwards, each node under the mean position of what it
/// points to (the barycentre heuristic).
fn place(graph: &Graph) -> Vec<Node> {
    fn layer(graph: &Graph, name: &str, depth: usize) -> usize {
        // A cycle cannot build; the depth bound only keeps a bad input finite.
        match graph.get(name) {
            Some(deps) if depth < graph.len() => deps
                .iter()
                .map(|dep| layer(graph, dep, depth + 1) + 1)
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
    let mut nodes: Vec<Node> = graph
        .keys()
        .map(|name| Node {
            name: Some(name.clone()),
            layer: layer(graph, name, 0),
            down: Vec::new(),
        })
        .collect();
    let index =
        |nodes: &[Node], name: &str| nodes.iter().position(|n| n.name.as_deref() == Some(name));
    for (name, deps) in graph {
        for dep in deps {
            let (Some(from), Some(to)) = (index(&nodes, name), index(&nodes, dep)) else {
                continue;
            };
            // Bend points in the rows between, from the top down.
            let mut upper = from;
            for row in (nodes[to].layer + 1..nodes[from].layer).rev() {
                nodes.push(Node {
                    name: None,
                    layer: row,
                    down: Vec::new(),
                });
                let bend = nodes.len() - 1;
                nodes[upper].down.push(bend);
                upper = bend;
            }
            nodes[upper].down.push(to);
        }
    }
    // Order each row by the mean position of what its nodes point to.
    let rows = nodes.iter().map(|n| n.layer + 1).max().unwrap_or(0);
    let mut position = vec![0.0; nodes.len()];
    let mut order = Vec::new();
    for row in 0..rows {
        let mut members: Vec<(f64, usize)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.layer == row)
            .enumerate()
            .map(|(rank, (i, node))| {
                let key = if node.down.is_empty() {
                    rank as f64
                } else {
                    node.down.iter().map(|&d| position[d]).sum::<f64>() / node.down.len() as f64
                };
                (key, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let count = members.len() as f64;
        for (rank, (_, i)) in members.into_iter().enumerate() {
            // As fractions of the row, comparable across rows.
            position[i] = (rank as f64 + 0.5) / count;
            order.push(i);
        }
    }
    // Renumber in drawing order.
    let renumber: BTreeMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(new, &old)| (old, new))
        .collect();
    let mut placed: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&old| placed[old].take())
        .map(|node| Node {
            down: node.down.iter().map(|d| renumber[d]).collect(),
            ..node
        })
        .collect()
}

const BOX_HEIGHT: usize = 28;
const ROW_GAP: usize = 48;
const BOX_GAP: usize = 16;
const BEND_WIDTH: usize = 8;
const CHAR_WIDTH: usize = 7;
const MARGIN: usize = 16;

/// The SVG of the placed nodes: one row per layer, the bottom layer at the
/// bottom; binaries orange, libraries blue.
fn draw(nodes: &[Node], binaries: &[String]) -> String {
    let rows = nodes.iter().map(|n| n.layer + 1).max().unwrap_or(0);
    let width_of = |node: &Node| {
        node.name
            .as_ref()
            .map_or(BEND_WIDTH, |name| name.len() * CHAR_WIDTH + 20)
    };
    let row_width = |row: usize| {
        let members: Vec<&Node> = nodes.iter().filter(|n| n.layer == row).collect();
        members.iter().map(|n| width_of(n)).sum::<usize>()
            + BOX_GAP * members.len().saturating_sub(1)
    };
    let width = (0..rows).map(row_width).max().unwrap_or(0) + 2 * MARGIN;
    let height = rows * BOX_HEIGHT + rows.saturating_sub(1) * ROW_GAP + 2 * MARGIN;
    // Each node's centre x and top y, in the nodes' order.
    let mut at = vec![(0, 0); nodes.len()];
    for row in 0..rows {
        let mut x = (width - row_width(row)) / 2;
        let y = MARGIN + (rows - 1 - row) * (BOX_HEIGHT + ROW_GAP);
        for (i, node) in nodes.iter().enumerate().filter(|(_, n)| n.layer == row) {
            at[i] = (x + width_of(node) / 2, y);
            x += width_of(node) + BOX_GAP;
        }
    }
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">
<!-- Generated by `./faultline crate-graph` from cargo metadata; do not edit. -->
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#888"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>"##
    );
    // Each arrow from a crate, through its bend points, to a crate.
    for (i, node) in nodes.iter().enumerate().filter(|(_, n)| n.name.is_some()) {
        for &first in &node.down {
            let (x, y) = at[i];
            let mut points = vec![(x, y + BOX_HEIGHT)];
            let mut next = first;
            while nodes[next].name.is_none() {
                let (bx, by) = at[next];
                points.extend([(bx, by), (bx, by + BOX_HEIGHT)]);
                match nodes[next].down.first() {
                    Some(&below) => next = below,
                    None => break,
                }
            }
            points.push(at[next]);
            let path: Vec<String> = points.iter().map(|(x, y)| format!("{x},{y}")).collect();
            let _ = writeln!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="#888" marker-end="url(#arrow)"/>"##,
                path.join(" ")
            );
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let Some(name) = &node.name else { continue };
        let fill = if binaries.contains(name) {
            "#fef3e0"
        } else {
            "#e8f0fe"
        };
        let (x, y) = at[i];
        let w = width_of(node);
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{y}" width="{w}" height="{BOX_HEIGHT}" rx="4" fill="{fill}" stroke="#555"/><text x="{x}" y="{}" text-anchor="middle">{name}</text>"##,
            x - w / 2,
            y + BOX_HEIGHT / 2 + 4,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_sits_one_layer_above_its_highest_dependency() {
        let graph: BTreeMap<String, Vec<String>> = [
            ("protocol", vec![]),
            ("bus", vec!["protocol"]),
            ("routing", vec!["bus", "protocol"]),
            ("gateway", vec!["routing"]),
        ]
        .into_iter()
        .map(|(name, deps)| {
            (
                name.to_owned(),
                deps.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
        let reduced = reduce(&graph);
        assert_eq!(reduced["routing"], ["bus"], "protocol is implied by bus");
        let nodes = place(&reduced);
        let placed: Vec<(usize, Option<&str>)> = nodes
            .iter()
            .map(|node| (node.layer, node.name.as_deref()))
            .collect();
        assert_eq!(
            placed,
            [
                (0, Some("protocol")),
                (1, Some("bus")),
                (2, Some("routing")),
                (3, Some("gateway"))
            ]
        );
        let svg = draw(&nodes, &["gateway".to_owned()]);
        assert_eq!(
            svg.matches("<polyline").count(),
            3,
            "an arrow per direct dependency"
        );
        assert_eq!(svg.matches("<text").count(), 4, "one box per crate");
    }

    #[test]
    fn an_arrow_that_skips_a_row_bends_through_it() {
        let graph: Graph = [
            ("a", vec!["b", "c"]),
            ("b", vec!["c"]),
            ("c", vec![]),
            ("d", vec!["c"]),
        ]
        .into_iter()
        .map(|(name, deps)| {
            (
                name.to_owned(),
                deps.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
        // Unreduced, a -> c skips row 1 (b and d).
        let nodes = place(&graph);
        let bends: Vec<usize> = nodes
            .iter()
            .filter(|n| n.name.is_none())
            .map(|n| n.layer)
            .collect();
        assert_eq!(bends, [1]);
        let svg = draw(&nodes, &[]);
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
