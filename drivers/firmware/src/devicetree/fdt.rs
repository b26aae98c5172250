//! A strict reader of the flattened device tree blob (Devicetree Specification v0.4,
//! chapter 5 "Flattened Devicetree (DTB) Format").
//!
//! The structure block is decoded once into a flat list of nodes and properties that
//! borrow from the blob; every token, offset and string is bounds-checked first.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::FirmwareError;
use crate::bytes::{be32, be64, slice};

/// DTSpec §5.2 `magic`.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// DTSpec §5.2: the header is ten big-endian u32 fields.
pub const FDT_HEADER_SIZE: usize = 40;
/// DTSpec §5.2: the version this reader implements; `last_comp_version` must not exceed it.
const FDT_VERSION: u32 = 17;
/// DTSpec §5.2: version 16 is the oldest whose layout (and `size_dt_strings`) we read.
const FDT_OLDEST_READABLE: u32 = 16;
/// Largest DTB accepted (the Linux arm64 boot protocol's limit); a corrupt header must
/// not make [`super::dtb_size`] callers map gigabytes.
pub const MAX_DTB_SIZE: usize = 2 << 20;
/// Node and per-node property limits. Real trees have a few thousand nodes and fewer
/// than a hundred properties per node; the limits keep every lookup on a hostile tree
/// bounded (no quadratic blow-up on a 2 MiB blob).
pub const MAX_NODES: usize = 32 * 1024;
/// More properties in one node are refused (bounded work on hostile input).
pub const MAX_PROPERTIES_PER_NODE: usize = 1024;
/// Nodes nest at most this deep; real trees use fewer than 10 levels.
pub const MAX_DEPTH: usize = 64;

/// DTSpec §5.4.1 structure-block tokens.
const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// DTSpec §5.2 header field offsets.
mod header {
    pub const MAGIC: usize = 0;
    pub const TOTALSIZE: usize = 4;
    pub const OFF_DT_STRUCT: usize = 8;
    pub const OFF_DT_STRINGS: usize = 12;
    pub const OFF_MEM_RSVMAP: usize = 16;
    pub const VERSION: usize = 20;
    pub const LAST_COMP_VERSION: usize = 24;
    pub const SIZE_DT_STRINGS: usize = 32;
    pub const SIZE_DT_STRUCT: usize = 36;
}

/// The total size of a DTB from its header (DTSpec §5.2 `totalsize`), after checking the
/// magic and that the size lies between the header size and [`MAX_DTB_SIZE`].
pub fn total_size(header_bytes: &[u8]) -> Result<usize, FirmwareError> {
    let truncated = |offset| FirmwareError::Truncated {
        what: "DTB header",
        offset,
    };
    let magic = be32(header_bytes, header::MAGIC).ok_or(truncated(header::MAGIC))?;
    if magic != FDT_MAGIC {
        return Err(FirmwareError::BadSignature { what: "DTB magic" });
    }
    let total = be32(header_bytes, header::TOTALSIZE).ok_or(truncated(header::TOTALSIZE))?;
    let total = usize::try_from(total).map_err(|_| FirmwareError::Overflow {
        what: "DTB totalsize",
    })?;
    if !(FDT_HEADER_SIZE..=MAX_DTB_SIZE).contains(&total) {
        return Err(FirmwareError::BadLength {
            what: "DTB totalsize",
            offset: header::TOTALSIZE,
            length: total,
        });
    }
    Ok(total)
}

/// One property: its name from the strings block and its raw big-endian value.
#[derive(Debug, Clone, Copy)]
pub struct Property<'a> {
    /// The property's name.
    pub name: &'a str,
    /// Its raw value (big-endian cells).
    pub value: &'a [u8],
}

/// One node, with its properties as a contiguous run of [`Fdt::props`] (DTSpec §5.4.2:
/// a node's properties precede its children, which this reader enforces).
#[derive(Debug, Clone, Copy)]
struct Node<'a> {
    name: &'a str,
    parent: Option<usize>,
    first_child: Option<usize>,
    next_sibling: Option<usize>,
    first_prop: usize,
    prop_count: usize,
}

/// Index of a node inside an [`Fdt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(usize);

/// A parsed device tree borrowing from the blob.
#[derive(Debug)]
pub struct Fdt<'a> {
    nodes: Vec<Node<'a>>,
    props: Vec<Property<'a>>,
    reservations: Vec<(u64, u64)>,
    /// phandle → node (the first node claiming a phandle wins).
    phandles: BTreeMap<u32, usize>,
    /// Per node: the `interrupt-parent` phandle in effect (own or inherited).
    interrupt_parents: Vec<Option<u32>>,
}

fn block<'a>(
    dtb: &'a [u8],
    off_field: usize,
    size_field: usize,
    what: &'static str,
) -> Result<&'a [u8], FirmwareError> {
    let offset = be32(dtb, off_field).ok_or(FirmwareError::Truncated {
        what: "DTB header",
        offset: off_field,
    })? as usize;
    let size = be32(dtb, size_field).ok_or(FirmwareError::Truncated {
        what: "DTB header",
        offset: size_field,
    })? as usize;
    if offset < FDT_HEADER_SIZE {
        return Err(FirmwareError::Malformed { what, offset });
    }
    slice(dtb, offset, size).ok_or(FirmwareError::BadLength {
        what,
        offset,
        length: size,
    })
}

fn c_str<'a>(bytes: &'a [u8], offset: usize, what: &'static str) -> Result<&'a str, FirmwareError> {
    let tail = bytes
        .get(offset..)
        .ok_or(FirmwareError::Truncated { what, offset })?;
    let len = tail
        .iter()
        .position(|&b| b == 0)
        .ok_or(FirmwareError::Truncated { what, offset })?;
    core::str::from_utf8(&tail[..len]).map_err(|_| FirmwareError::Malformed { what, offset })
}

fn align4(value: usize) -> Option<usize> {
    Some(value.checked_add(3)? & !3)
}

impl<'a> Fdt<'a> {
    /// Parses a DTB. `dtb` may be longer than the header's `totalsize`; the rest is ignored.
    pub fn parse(dtb: &'a [u8]) -> Result<Self, FirmwareError> {
        let total = total_size(dtb)?;
        let dtb = dtb.get(..total).ok_or(FirmwareError::Truncated {
            what: "DTB totalsize",
            offset: dtb.len(),
        })?;
        let version = be32(dtb, header::VERSION).ok_or(FirmwareError::Truncated {
            what: "DTB header",
            offset: header::VERSION,
        })?;
        let last_comp = be32(dtb, header::LAST_COMP_VERSION).ok_or(FirmwareError::Truncated {
            what: "DTB header",
            offset: header::LAST_COMP_VERSION,
        })?;
        if version < FDT_OLDEST_READABLE || last_comp > FDT_VERSION {
            return Err(FirmwareError::UnsupportedVersion {
                what: "DTB",
                version,
            });
        }
        let structure = block(
            dtb,
            header::OFF_DT_STRUCT,
            header::SIZE_DT_STRUCT,
            "DTB structure block",
        )?;
        let strings = block(
            dtb,
            header::OFF_DT_STRINGS,
            header::SIZE_DT_STRINGS,
            "DTB strings block",
        )?;
        let reservations = Self::parse_reservations(dtb)?;
        let mut fdt = Fdt {
            nodes: Vec::new(),
            props: Vec::new(),
            reservations,
            phandles: BTreeMap::new(),
            interrupt_parents: Vec::new(),
        };
        fdt.parse_structure(structure, strings)?;
        fdt.build_indexes();
        Ok(fdt)
    }

    /// DTSpec §5.3 memory reservation block: (address, size) u64 pairs ending with (0, 0).
    fn parse_reservations(dtb: &[u8]) -> Result<Vec<(u64, u64)>, FirmwareError> {
        let mut offset = be32(dtb, header::OFF_MEM_RSVMAP).ok_or(FirmwareError::Truncated {
            what: "DTB header",
            offset: header::OFF_MEM_RSVMAP,
        })? as usize;
        if offset < FDT_HEADER_SIZE || !offset.is_multiple_of(8) {
            return Err(FirmwareError::Malformed {
                what: "DTB memory reservation block",
                offset,
            });
        }
        let mut entries = Vec::new();
        loop {
            let truncated = FirmwareError::Truncated {
                what: "DTB memory reservation block",
                offset,
            };
            let address = be64(dtb, offset).ok_or(truncated)?;
            let size = be64(dtb, offset + 8).ok_or(truncated)?;
            if address == 0 && size == 0 {
                return Ok(entries);
            }
            address.checked_add(size).ok_or(FirmwareError::Overflow {
                what: "DTB memory reservation",
            })?;
            entries.push((address, size));
            offset += 16;
        }
    }

    /// DTSpec §5.4 structure block: a token stream of nested nodes with properties.
    fn parse_structure(
        &mut self,
        structure: &'a [u8],
        strings: &'a [u8],
    ) -> Result<(), FirmwareError> {
        // Per open node: its index and its last child so far (once a child was seen,
        // no more properties may follow).
        let mut stack: Vec<(usize, Option<usize>)> = Vec::new();
        let mut offset = 0usize;
        let mut root_closed = false;
        loop {
            let token = be32(structure, offset).ok_or(FirmwareError::Truncated {
                what: "DTB structure token",
                offset,
            })?;
            let body = offset + 4;
            match token {
                FDT_BEGIN_NODE => {
                    if root_closed {
                        return Err(FirmwareError::Malformed {
                            what: "DTB second root node",
                            offset,
                        });
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(FirmwareError::TooDeep { limit: MAX_DEPTH });
                    }
                    let name = c_str(structure, body, "DTB node name")?;
                    if stack.is_empty() && !name.is_empty() {
                        return Err(FirmwareError::Malformed {
                            what: "DTB root node name",
                            offset,
                        });
                    }
                    let index = self.nodes.len();
                    if index >= MAX_NODES {
                        return Err(FirmwareError::TooMany {
                            what: "DTB nodes",
                            limit: MAX_NODES,
                        });
                    }
                    let mut parent = None;
                    if let Some((parent_index, last_child)) = stack.last_mut() {
                        match last_child.replace(index) {
                            Some(previous) => self.nodes[previous].next_sibling = Some(index),
                            None => self.nodes[*parent_index].first_child = Some(index),
                        }
                        parent = Some(*parent_index);
                    }
                    self.nodes.push(Node {
                        name,
                        parent,
                        first_child: None,
                        next_sibling: None,
                        first_prop: self.props.len(),
                        prop_count: 0,
                    });
                    stack.push((index, None));
                    offset = align4(body + name.len() + 1)
                        .ok_or(FirmwareError::Overflow { what: "DTB offset" })?;
                }
                FDT_END_NODE => {
                    stack.pop().ok_or(FirmwareError::Malformed {
                        what: "DTB unbalanced END_NODE",
                        offset,
                    })?;
                    root_closed = stack.is_empty();
                    offset = body;
                }
                FDT_PROP => {
                    let &mut (node, last_child) =
                        stack.last_mut().ok_or(FirmwareError::Malformed {
                            what: "DTB property outside a node",
                            offset,
                        })?;
                    if last_child.is_some() {
                        return Err(FirmwareError::Malformed {
                            what: "DTB property after a child node",
                            offset,
                        });
                    }
                    let truncated = FirmwareError::Truncated {
                        what: "DTB property",
                        offset,
                    };
                    let len = be32(structure, body).ok_or(truncated)? as usize;
                    let name_offset = be32(structure, body + 4).ok_or(truncated)? as usize;
                    let value =
                        slice(structure, body + 8, len).ok_or(FirmwareError::BadLength {
                            what: "DTB property value",
                            offset,
                            length: len,
                        })?;
                    let name = c_str(strings, name_offset, "DTB property name")?;
                    if self.nodes[node].prop_count >= MAX_PROPERTIES_PER_NODE {
                        return Err(FirmwareError::TooMany {
                            what: "DTB properties of one node",
                            limit: MAX_PROPERTIES_PER_NODE,
                        });
                    }
                    self.props.push(Property { name, value });
                    self.nodes[node].prop_count += 1;
                    offset = align4(body + 8 + len)
                        .ok_or(FirmwareError::Overflow { what: "DTB offset" })?;
                }
                FDT_NOP => offset = body,
                FDT_END => {
                    if !root_closed {
                        return Err(FirmwareError::Malformed {
                            what: "DTB END inside a node",
                            offset,
                        });
                    }
                    return Ok(());
                }
                _ => {
                    return Err(FirmwareError::Malformed {
                        what: "DTB structure token",
                        offset,
                    });
                }
            }
        }
    }

    /// The root node.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    /// `/memreserve/` entries (address, size) from the memory reservation block.
    pub fn reservations(&self) -> &[(u64, u64)] {
        &self.reservations
    }

    /// Every node in document order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The full node name, `name@unit-address`.
    pub fn name(&self, node: NodeId) -> &'a str {
        self.nodes[node.0].name
    }

    /// The node's parent (`None` for the root).
    pub fn parent(&self, node: NodeId) -> Option<NodeId> {
        self.nodes[node.0].parent.map(NodeId)
    }

    /// The node's children, in order.
    pub fn children(&self, node: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        core::iter::successors(self.nodes[node.0].first_child, |&c| {
            self.nodes[c].next_sibling
        })
        .map(NodeId)
    }

    /// The node's properties, in order.
    pub fn properties(&self, node: NodeId) -> &[Property<'a>] {
        let n = &self.nodes[node.0];
        &self.props[n.first_prop..n.first_prop + n.prop_count]
    }

    /// The value of the node's property `name`.
    pub fn property(&self, node: NodeId, name: &str) -> Option<&'a [u8]> {
        self.properties(node)
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value)
    }

    /// A property holding exactly one u32 cell.
    pub fn u32_property(
        &self,
        node: NodeId,
        name: &'static str,
    ) -> Result<Option<u32>, FirmwareError> {
        match self.property(node, name) {
            None => Ok(None),
            Some(value) if value.len() == 4 => Ok(be32(value, 0)),
            Some(value) => Err(FirmwareError::BadLength {
                what: name,
                offset: 0,
                length: value.len(),
            }),
        }
    }

    /// A property holding one NUL-terminated UTF-8 string.
    pub fn str_property(
        &self,
        node: NodeId,
        name: &'static str,
    ) -> Result<Option<&'a str>, FirmwareError> {
        match self.property(node, name) {
            None => Ok(None),
            Some(value) => match value.split_last() {
                Some((0, text)) if !text.contains(&0) => core::str::from_utf8(text)
                    .map(Some)
                    .map_err(|_| FirmwareError::Malformed {
                        what: name,
                        offset: 0,
                    }),
                _ => Err(FirmwareError::Malformed {
                    what: name,
                    offset: 0,
                }),
            },
        }
    }

    /// The strings of a string-list property (e.g. `compatible`, DTSpec §2.2.4
    /// `<stringlist>`): NUL-terminated strings back to back. A list that does not end
    /// in NUL is malformed and yields nothing.
    pub fn string_list(&self, node: NodeId, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let body = match self.property(node, name).and_then(<[u8]>::split_last) {
            Some((0, body)) => Some(body),
            _ => None,
        };
        body.into_iter()
            .flat_map(|b| b.split(|&c| c == 0))
            .filter_map(|s| core::str::from_utf8(s).ok())
    }

    /// `compatible` is one of the node's `compatible` strings.
    pub fn is_compatible(&self, node: NodeId, compatible: &str) -> bool {
        self.string_list(node, "compatible")
            .any(|c| c == compatible)
    }

    /// DTSpec §2.3.4 `status`: absent, "okay" or "ok" mean the device is usable.
    pub fn is_enabled(&self, node: NodeId) -> bool {
        matches!(
            self.str_property(node, "status"),
            Ok(None) | Ok(Some("okay")) | Ok(Some("ok"))
        )
    }

    /// DTSpec §2.3.5 `#address-cells` this node defines for its children (default 2).
    pub fn address_cells(&self, node: NodeId) -> Result<u32, FirmwareError> {
        Ok(self.u32_property(node, "#address-cells")?.unwrap_or(2))
    }

    /// DTSpec §2.3.5 `#size-cells` this node defines for its children (default 1).
    pub fn size_cells(&self, node: NodeId) -> Result<u32, FirmwareError> {
        Ok(self.u32_property(node, "#size-cells")?.unwrap_or(1))
    }

    /// DTSpec §2.3.3 `phandle` (or the legacy `linux,phandle`).
    pub fn phandle(&self, node: NodeId) -> Result<Option<u32>, FirmwareError> {
        match self.u32_property(node, "phandle")? {
            Some(p) => Ok(Some(p)),
            None => self.u32_property(node, "linux,phandle"),
        }
    }

    /// The node whose `phandle` is `phandle`.
    pub fn by_phandle(&self, phandle: u32) -> Option<NodeId> {
        self.phandles.get(&phandle).copied().map(NodeId)
    }

    /// Resolves an absolute path such as `/pl011@9000000`; a component without `@`
    /// also matches a node whose name has a unit address (DTSpec §2.2.3).
    pub fn find_path(&self, path: &str) -> Option<NodeId> {
        let rest = path.strip_prefix('/')?;
        let mut node = self.root();
        for component in rest.split('/').filter(|c| !c.is_empty()) {
            node = self.children(node).find(|&c| {
                let name = self.name(c);
                name == component
                    || (!component.contains('@') && name.split('@').next() == Some(component))
            })?;
        }
        Some(node)
    }

    /// The `reg` entries of `node` as (address, size) in the parent bus's address space,
    /// with addresses and sizes of at most two cells each.
    pub fn raw_reg(&self, node: NodeId) -> Result<Vec<(u64, u64)>, FirmwareError> {
        let Some(parent) = self.parent(node) else {
            return Ok(Vec::new());
        };
        let Some(value) = self.property(node, "reg") else {
            return Ok(Vec::new());
        };
        let address_cells = self.address_cells(parent)?;
        let size_cells = self.size_cells(parent)?;
        let entries = cell_tuples(value, &[address_cells, size_cells], "reg")?;
        Ok(entries.into_iter().map(|t| (t[0], t[1])).collect())
    }

    /// The `reg` entries of `node` translated to CPU physical addresses through the
    /// `ranges` of every ancestor bus (DTSpec §2.3.8). An absent or empty `ranges` is
    /// taken as an identity mapping; an address outside a non-empty `ranges` is an error.
    pub fn reg(&self, node: NodeId) -> Result<Vec<(u64, u64)>, FirmwareError> {
        let mut regs = self.raw_reg(node)?;
        for (address, size) in regs.iter_mut() {
            let mut bus = self.parent(node);
            while let Some(b) = bus {
                let Some(upper) = self.parent(b) else { break };
                *address = self.translate(b, upper, *address, *size)?;
                bus = Some(upper);
            }
        }
        Ok(regs)
    }

    fn translate(
        &self,
        bus: NodeId,
        upper: NodeId,
        address: u64,
        size: u64,
    ) -> Result<u64, FirmwareError> {
        let ranges = match self.property(bus, "ranges") {
            None | Some([]) => return Ok(address),
            Some(r) => r,
        };
        let layout = [
            self.address_cells(bus)?,
            self.address_cells(upper)?,
            self.size_cells(bus)?,
        ];
        for entry in cell_tuples(ranges, &layout, "ranges")? {
            let (child, parent, len) = (entry[0], entry[1], entry[2]);
            let offset = address.wrapping_sub(child);
            if address >= child && offset < len && size <= len - offset {
                return parent
                    .checked_add(offset)
                    .ok_or(FirmwareError::Overflow { what: "ranges" });
            }
        }
        Err(FirmwareError::Malformed {
            what: "reg outside the parent's ranges",
            offset: 0,
        })
    }

    /// DTSpec §2.4.1 `interrupt-parent`, inherited from the nearest ancestor that has one.
    pub fn interrupt_parent(&self, node: NodeId) -> Result<Option<NodeId>, FirmwareError> {
        match self.interrupt_parents[node.0] {
            None => Ok(None),
            Some(phandle) => self
                .by_phandle(phandle)
                .map(Some)
                .ok_or(FirmwareError::Missing {
                    what: "interrupt-parent phandle",
                }),
        }
    }

    /// Builds the phandle map and resolves inherited `interrupt-parent`s in one pass
    /// (parents precede children in document order). Malformed values are left out
    /// here and reported by the accessors that need them.
    fn build_indexes(&mut self) {
        let mut interrupt_parents = Vec::with_capacity(self.nodes.len());
        for index in 0..self.nodes.len() {
            let node = NodeId(index);
            if let Ok(Some(phandle)) = self.phandle(node) {
                self.phandles.entry(phandle).or_insert(index);
            }
            let own = self.u32_property(node, "interrupt-parent").ok().flatten();
            let inherited = self.nodes[index].parent.and_then(|p| interrupt_parents[p]);
            interrupt_parents.push(own.or(inherited));
        }
        self.interrupt_parents = interrupt_parents;
    }
}

/// Splits a property into tuples of fields, each field `cells[i]` big-endian cells wide
/// (at most 2, i.e. 64 bits). The property length must be a whole number of tuples.
pub fn cell_tuples(
    value: &[u8],
    cells: &[u32],
    what: &'static str,
) -> Result<Vec<Vec<u64>>, FirmwareError> {
    if cells.iter().any(|&c| c > 2) {
        return Err(FirmwareError::Malformed { what, offset: 0 });
    }
    let stride: usize = cells.iter().map(|&c| c as usize * 4).sum();
    if stride == 0 || !value.len().is_multiple_of(stride) {
        return Err(FirmwareError::BadLength {
            what,
            offset: 0,
            length: value.len(),
        });
    }
    let mut tuples = Vec::with_capacity(value.len() / stride);
    for chunk in value.chunks_exact(stride) {
        let mut fields = Vec::with_capacity(cells.len());
        let mut at = 0;
        for &c in cells {
            fields.push(
                read_cells(chunk, at, c).ok_or(FirmwareError::Truncated { what, offset: at })?,
            );
            at += c as usize * 4;
        }
        tuples.push(fields);
    }
    Ok(tuples)
}

/// A value of `cells` (0, 1 or 2) big-endian cells at `offset`.
pub fn read_cells(data: &[u8], offset: usize, cells: u32) -> Option<u64> {
    match cells {
        0 => Some(0),
        1 => be32(data, offset).map(u64::from),
        2 => be64(data, offset),
        _ => None,
    }
}
