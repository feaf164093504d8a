//! Wing–Gong–Lowe (WGL) linearizability checker with memoization, in the style of
//! [porcupine](https://github.com/anishathalye/porcupine) and Gavin Lowe's
//! "Testing for linearizability" (2017).
//!
//! # The algorithm
//!
//! A history is a set of [`Operation`]s on one object (one key). Every operation has an
//! invocation time (`call`) and a completion time (`ret`). The history is linearizable if
//! there is a total order of the operations that
//!
//! 1. respects real time: if `a` returned before `b` was invoked, `a` comes before `b`;
//! 2. is legal for the sequential specification ([`Model`]): replaying the operations in
//!    that order from [`Model::init`] produces exactly the outputs the clients saw.
//!
//! The checker turns every operation into two events (call and return), sorts them by time
//! and threads them onto a doubly linked list (a `Vec` of nodes linked by indices). The
//! search then repeatedly looks at the head of the list:
//!
//! * If the head region holds call events, every call event that precedes the first return
//!   event is a *candidate*: its operation is concurrent with everything still pending, so
//!   it may be linearized next. The checker tries to apply it to the current model state;
//!   if that works (and the resulting configuration has not been explored before), the
//!   operation's call and return events are *lifted* out of the list, the choice is pushed
//!   on an explicit stack, and the search restarts at the new head.
//! * If the search reaches a return event, the operation it belongs to should already have
//!   been linearized but was not: the current prefix is a dead end. The checker pops the
//!   last choice, *unlifts* its events (putting them back where they were), restores the
//!   state, and tries the next alternative.
//! * When the list is empty every operation has been linearized: success. When a dead end
//!   is hit with an empty stack: the history is not linearizable.
//!
//! The stack is explicit, so histories with thousands of operations cannot overflow the
//! native stack.
//!
//! ## Memoization
//!
//! Two search nodes with the same *set* of linearized operations and the same model state
//! have the same future, no matter in which order the operations were linearized. The
//! checker keeps a cache of `(bitset of linearized operations, state)` pairs and never
//! enters the same configuration twice. This is what makes WGL practical.
//!
//! ## Nondeterministic models
//!
//! [`Model::step`] returns *every* state an operation may lead to. The stack frame
//! remembers the alternatives that have not been tried yet; on backtrack the next
//! alternative of the *same* operation is tried before moving on to the next candidate.
//!
//! ## Indeterminate operations
//!
//! A client that timed out does not know whether its operation took effect, and if it did,
//! when: anywhere after the invocation, possibly long after the client gave up. Such an
//! operation has `ret: None` / `output: None` and is given a return event at +infinity, so
//! it is concurrent with every operation invoked after it and stays a candidate until the
//! very end of the search.
//!
//! Because its return event is at +infinity it must still be linearized for the list to
//! become empty. That is why [`Model::step`] is required to include the *unchanged* state
//! among its alternatives when `output` is `None` (unless the operation cannot possibly be a
//! no-op): linearizing it with the unchanged state means "it never took effect". Once only
//! indeterminate operations remain they can always be linearized (each at least as a
//! no-op), so the search terminates with [`Verdict::Linearizable`].
//!
//! Every indeterminate operation widens the set of concurrent candidates for the rest of
//! the history, so a history with many of them can make the search expensive; the step
//! budget (`max_steps`) bounds that and yields [`Verdict::Unknown`].
//!
//! ## Tie rule for equal timestamps
//!
//! Clocks are coarse, so a return and a call can carry the same timestamp. Events at the
//! same time `t` are ordered:
//!
//! 1. returns of operations invoked strictly before `t`,
//! 2. calls at `t`,
//! 3. returns of operations that were invoked at `t` too (zero-length operations).
//!
//! So an operation that returned at `t` is **not** concurrent with one invoked at `t`: it
//! must be linearized first. This is the stricter reading (it finds more violations); it is
//! sound as long as a client records its `ret` timestamp only after the response arrived
//! and the next `call` timestamp before sending the request, with one monotonic clock.
//! A zero-length operation (`ret == call`) still has its return after its own call and is
//! treated as concurrent with other operations invoked at the same instant. A `ret`
//! earlier than `call` is clamped to `call`.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The abstract state of the object.
    type State: Clone + Eq + Hash + Debug;
    /// What a client asked for.
    type Input: Debug;
    /// What a client was told.
    type Output: Debug;

    /// The initial state.
    fn init(&self) -> Self::State;

    /// Every state the operation may lead to from `state`, given what the client saw.
    ///
    /// `output` is `None` when the operation is indeterminate (no answer). An empty `Vec`
    /// means the operation cannot be linearized in `state` with this output.
    ///
    /// Contract for indeterminate operations: when `output` is `None`, the result must
    /// include `state` itself (unchanged) among the alternatives if the operation may have
    /// had no effect at all (a request lost before it was applied). The checker has to
    /// linearize every operation, including indeterminate ones that never happened, and
    /// the unchanged-state alternative is how "it never took effect" is expressed.
    ///
    /// Duplicates in the result are harmless. The order of the alternatives only affects
    /// the speed of the search, not its verdict.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Vec<Self::State>;
}

/// One operation of a history on one key.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    /// The client that issued it; for messages only.
    pub client: u64,
    /// Invocation time (any monotonic unit, e.g. ns).
    pub call: u64,
    /// Completion time; `None` = indeterminate (treated as returning at +infinity).
    pub ret: Option<u64>,
    /// What the client asked for.
    pub input: I,
    /// What the client was told; `None` exactly when indeterminate.
    pub output: Option<O>,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid linearization exists.
    Linearizable,
    /// Not linearizable. `longest` = indices (into the input slice) of the longest
    /// linearizable prefix found, in linearization order; `stuck` = indices of operations
    /// that could not be linearized next from that point (the minimal-call frontier), for a
    /// human-readable report.
    NotLinearizable {
        /// The longest linearizable prefix found, in linearization order.
        longest: Vec<usize>,
        /// The candidates after `longest`, none of which led to a full linearization.
        stuck: Vec<usize>,
    },
    /// The search exceeded the step budget (report it as "unknown", not a pass).
    Unknown,
}

/// "No node" marker for the linked list.
const NIL: usize = usize::MAX;
/// Index of the sentinel head node.
const HEAD: usize = 0;

/// One event of the linked list.
#[derive(Debug, Clone)]
struct Node {
    /// Index of the operation in the input slice (unused for the head).
    op: usize,
    /// Call event (`true`) or return event (`false`).
    is_call: bool,
    /// For a call event: the node index of its return event.
    matching: usize,
    prev: usize,
    next: usize,
}

/// A doubly linked list of events over a `Vec`, with the sentinel at index [`HEAD`].
struct EventList {
    nodes: Vec<Node>,
}

impl EventList {
    /// Builds the list from the operations, ordered by time with the tie rule of the
    /// module documentation.
    fn new<I, O>(ops: &[Operation<I, O>]) -> Self {
        // Sort key: (at +infinity, time, class, op index). Class 0 = return of an op invoked
        // earlier, 1 = call, 2 = return of a zero-length op. The op index makes it total.
        let mut events: Vec<((bool, u64, u8, usize), bool)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push(((false, op.call, 1, i), true));
            let ret_key = match op.ret {
                None => (true, 0, 0, i),
                Some(r) if r > op.call => (false, r, 0, i),
                Some(_) => (false, op.call, 2, i),
            };
            events.push((ret_key, false));
        }
        events.sort_unstable_by_key(|e| e.0);

        let mut nodes = Vec::with_capacity(events.len() + 1);
        nodes.push(Node {
            op: usize::MAX,
            is_call: false,
            matching: NIL,
            prev: NIL,
            next: if events.is_empty() { NIL } else { 1 },
        });
        let mut ret_node = vec![NIL; ops.len()];
        let len = events.len();
        for (pos, &((_, _, _, op), is_call)) in events.iter().enumerate() {
            let idx = pos + 1;
            if !is_call {
                ret_node[op] = idx;
            }
            nodes.push(Node {
                op,
                is_call,
                matching: NIL,
                prev: idx - 1,
                next: if pos + 1 < len { idx + 1 } else { NIL },
            });
        }
        for node in nodes.iter_mut().skip(1).filter(|n| n.is_call) {
            node.matching = ret_node[node.op];
        }
        Self { nodes }
    }

    fn first(&self) -> usize {
        self.nodes[HEAD].next
    }

    /// Removes a call event and its return event from the list.
    fn lift(&mut self, entry: usize) {
        let Node {
            prev,
            next,
            matching,
            ..
        } = self.nodes[entry];
        // A call is always followed by (at least) its own return, so `next != NIL`.
        self.nodes[prev].next = next;
        self.nodes[next].prev = prev;
        let Node { prev, next, .. } = self.nodes[matching];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    /// Undoes [`EventList::lift`]; must be called in reverse order of the lifts.
    fn unlift(&mut self, entry: usize) {
        let matching = self.nodes[entry].matching;
        let Node { prev, next, .. } = self.nodes[matching];
        self.nodes[prev].next = matching;
        if next != NIL {
            self.nodes[next].prev = matching;
        }
        let Node { prev, next, .. } = self.nodes[entry];
        self.nodes[prev].next = entry;
        self.nodes[next].prev = entry;
    }

    /// The operations of the call events before the first return event.
    fn frontier(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut cur = self.first();
        while cur != NIL && self.nodes[cur].is_call {
            out.push(self.nodes[cur].op);
            cur = self.nodes[cur].next;
        }
        out
    }
}

/// A fixed-size bitset of linearized operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Self(vec![0; bits.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// One choice of the search: `entry` was linearized, leading away from `state`.
struct Frame<S> {
    /// The call node that was lifted.
    entry: usize,
    /// The state before the operation was applied.
    state: S,
    /// Alternatives of the same step not tried yet (tried from the back).
    rest: Vec<S>,
}

/// Checks whether `ops` (all operations on one object) is linearizable with respect to
/// `model`.
///
/// Each attempt to linearize an operation counts as one step: a call to [`Model::step`],
/// or a retry of its remaining alternatives after backtracking. More than `max_steps`
/// steps yield [`Verdict::Unknown`]. A history that linearizes without backtracking takes
/// exactly one step per operation.
#[must_use]
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Verdict {
    let mut list = EventList::new(ops);
    let mut linearized = Bitset::new(ops.len());
    let mut cache: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut steps: u64 = 0;
    // Node indices of the longest linearized prefix seen so far, and how many of its
    // leading entries still agree with `stack` (so that recording it stays amortized O(1)).
    let mut longest: Vec<usize> = Vec::new();
    let mut agree: usize = 0;

    let mut entry = list.first();
    // Alternatives to try for `entry`; `None` means "ask the model".
    let mut pending: Option<Vec<M::State>> = None;

    while list.first() != NIL {
        let node = &list.nodes[entry];
        if !node.is_call {
            // Dead end: the operation of this return event had to be linearized already.
            let Some(frame) = stack.pop() else {
                return not_linearizable(&mut list, &longest);
            };
            linearized.clear(list.nodes[frame.entry].op);
            list.unlift(frame.entry);
            agree = agree.min(stack.len());
            state = frame.state;
            entry = frame.entry;
            pending = Some(frame.rest);
            continue;
        }

        steps += 1;
        if steps > max_steps {
            return Verdict::Unknown;
        }
        let op_idx = node.op;
        let next_node = node.next;
        let mut alternatives = pending.take().unwrap_or_else(|| {
            let op = &ops[op_idx];
            let mut alts = model.step(&state, &op.input, op.output.as_ref());
            // Try them in the order the model gave, popping from the back.
            alts.reverse();
            alts
        });

        linearized.set(op_idx);
        let mut chosen = None;
        while let Some(candidate) = alternatives.pop() {
            if cache.insert((linearized.clone(), candidate.clone())) {
                chosen = Some(candidate);
                break;
            }
        }
        match chosen {
            Some(new_state) => {
                list.lift(entry);
                stack.push(Frame {
                    entry,
                    state: std::mem::replace(&mut state, new_state),
                    rest: alternatives,
                });
                if stack.len() > longest.len() {
                    longest.truncate(agree);
                    longest.extend(stack[agree..].iter().map(|f| f.entry));
                    agree = stack.len();
                }
                entry = list.first();
            }
            None => {
                linearized.clear(op_idx);
                entry = next_node;
            }
        }
    }
    Verdict::Linearizable
}

/// Builds the report for a failed search; `list` must be fully unlifted (empty stack).
fn not_linearizable(list: &mut EventList, longest: &[usize]) -> Verdict {
    for &e in longest {
        list.lift(e);
    }
    let stuck = list.frontier();
    for &e in longest.iter().rev() {
        list.unlift(e);
    }
    Verdict::NotLinearizable {
        longest: longest.iter().map(|&e| list.nodes[e].op).collect(),
        stuck,
    }
}

/// A single read/write register holding an `Option<u64>`, initially `None` (empty).
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

/// Input of a [`Register`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// Store a value.
    Write(u64),
    /// Read the current value.
    Read,
}

/// Output of a [`Register`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOut {
    /// A write was acknowledged.
    Written,
    /// A read returned this value (`None` = the register is empty).
    Value(Option<u64>),
}

impl Model for Register {
    type State = Option<u64>;
    type Input = RegisterOp;
    type Output = RegisterOut;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Vec<Self::State> {
        match (input, output) {
            (RegisterOp::Write(v), Some(RegisterOut::Written)) => vec![Some(*v)],
            // Indeterminate write: it took effect, or it never did.
            (RegisterOp::Write(v), None) if *state == Some(*v) => vec![*state],
            (RegisterOp::Write(v), None) => vec![Some(*v), *state],
            (RegisterOp::Read, Some(RegisterOut::Value(v))) if v == state => vec![*state],
            // A read has no effect, whether it was answered or not.
            (RegisterOp::Read, None) => vec![*state],
            // Wrong value read, or an output of the wrong kind.
            (RegisterOp::Read, Some(_)) | (RegisterOp::Write(_), Some(RegisterOut::Value(_))) => {
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<RegisterOp, RegisterOut>;

    const BUDGET: u64 = 10_000_000;

    fn w(client: u64, call: u64, ret: u64, v: u64) -> Op {
        Operation {
            client,
            call,
            ret: Some(ret),
            input: RegisterOp::Write(v),
            output: Some(RegisterOut::Written),
        }
    }

    fn w_indet(client: u64, call: u64, v: u64) -> Op {
        Operation {
            client,
            call,
            ret: None,
            input: RegisterOp::Write(v),
            output: None,
        }
    }

    fn r(client: u64, call: u64, ret: u64, v: Option<u64>) -> Op {
        Operation {
            client,
            call,
            ret: Some(ret),
            input: RegisterOp::Read,
            output: Some(RegisterOut::Value(v)),
        }
    }

    fn verdict(ops: &[Op]) -> Verdict {
        check(&Register, ops, BUDGET)
    }

    fn assert_not_linearizable(ops: &[Op]) {
        assert!(
            matches!(verdict(ops), Verdict::NotLinearizable { .. }),
            "expected NotLinearizable for {ops:?}"
        );
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(verdict(&[]), Verdict::Linearizable);
    }

    #[test]
    fn sequential_write_then_read_is_linearizable() {
        let ops = [w(1, 0, 10, 1), r(2, 20, 30, Some(1))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }

    #[test]
    fn read_of_never_written_value_is_not_linearizable() {
        let ops = [w(1, 0, 10, 1), r(2, 20, 30, Some(42))];
        assert_not_linearizable(&ops);
        assert_eq!(
            verdict(&[r(1, 0, 1, Some(42))]),
            Verdict::NotLinearizable {
                longest: vec![],
                stuck: vec![0]
            }
        );
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let ops = [w(1, 0, 10, 1), r(2, 20, 30, None)];
        assert_not_linearizable(&ops);
    }

    #[test]
    fn tie_return_and_call_at_same_time_are_not_concurrent() {
        // The write returned at 10 and the read was invoked at 10: not concurrent.
        let ops = [w(1, 0, 10, 1), r(2, 10, 30, None)];
        assert_not_linearizable(&ops);
        // One tick of overlap makes them concurrent.
        let ops = [w(1, 0, 11, 1), r(2, 10, 30, None)];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }

    #[test]
    fn zero_length_operations_are_handled() {
        let ops = [w(1, 5, 5, 1), r(2, 5, 5, Some(1)), r(3, 6, 6, Some(1))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        let ops = [w(1, 5, 5, 1), r(3, 6, 6, None)];
        assert_not_linearizable(&ops);
    }

    #[test]
    fn concurrent_write_and_read_are_linearizable_either_way() {
        let ops = [w(1, 0, 20, 1), r(2, 5, 15, None)];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        let ops = [w(1, 0, 20, 1), r(2, 5, 15, Some(1))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        // ... but not a value nobody wrote.
        let ops = [w(1, 0, 20, 1), r(2, 5, 15, Some(2))];
        assert_not_linearizable(&ops);
    }

    #[test]
    fn overlapping_writes_then_sequential_reads() {
        let writes = [w(1, 0, 10, 1), w(2, 1, 11, 2)];
        let mut flip = writes.to_vec();
        flip.extend([r(3, 20, 21, Some(2)), r(3, 22, 23, Some(1))]);
        assert_not_linearizable(&flip);

        let mut same = writes.to_vec();
        same.extend([r(3, 20, 21, Some(1)), r(4, 22, 23, Some(1))]);
        assert_eq!(verdict(&same), Verdict::Linearizable);

        let mut other = writes.to_vec();
        other.extend([r(3, 20, 21, Some(2)), r(4, 22, 23, Some(2))]);
        assert_eq!(verdict(&other), Verdict::Linearizable);
    }

    #[test]
    fn indeterminate_write_may_or_may_not_take_effect() {
        // Observed later: it took effect.
        let ops = [w_indet(1, 0, 5), r(2, 10, 20, Some(5))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        // Not observed: it never took effect (or not yet).
        let ops = [w_indet(1, 0, 5), r(2, 10, 20, None)];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        // Empty first, then observed: it took effect late (between the reads).
        let ops = [w_indet(1, 0, 5), r(2, 10, 20, None), r(2, 30, 40, Some(5))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        // Observed, then gone: nothing else wrote, so it cannot disappear.
        let ops = [w_indet(1, 0, 5), r(2, 10, 20, Some(5)), r(2, 30, 40, None)];
        assert_not_linearizable(&ops);
    }

    #[test]
    fn only_indeterminate_operations_are_linearizable() {
        // Kept small: every subset of concurrent indeterminate writes is a distinct search
        // configuration, so the cost grows about 2.3x per extra one in this shape.
        let ops: Vec<Op> = (0..10).map(|i| w_indet(i, i * 3, i)).collect();
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        let mut with_read = ops.clone();
        with_read.push(r(99, 1000, 1001, Some(7)));
        with_read.push(r(99, 1002, 1003, Some(3)));
        assert_eq!(verdict(&with_read), Verdict::Linearizable);
    }

    #[test]
    fn indeterminate_write_cannot_explain_an_earlier_read() {
        let ops = [r(1, 0, 10, Some(7)), w_indet(2, 20, 7)];
        assert_not_linearizable(&ops);
        // Sanity: if it was invoked before the read returned, it can.
        let ops = [r(1, 0, 10, Some(7)), w_indet(2, 5, 7)];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }

    #[test]
    fn nondeterministic_alternatives_are_backtracked() {
        // The indeterminate write 5 must be skipped at first (read None), and then taken
        // after the concurrent write 6 so that the final read sees 5. The model offers
        // "took effect" first, so the search has to backtrack into the second
        // alternative and later into the first one again.
        let ops = [
            w_indet(1, 0, 5),
            r(2, 1, 2, None),
            w(3, 3, 4, 6),
            r(2, 5, 6, Some(6)),
            r(2, 7, 8, Some(5)),
        ];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
        let ops = [
            w_indet(1, 0, 5),
            r(2, 1, 2, Some(5)),
            w(3, 3, 4, 6),
            r(2, 5, 6, Some(6)),
            r(2, 7, 8, Some(5)),
        ];
        assert_not_linearizable(&ops);
    }

    /// A nondeterministic test model: `Roll` leaves the die on 1, 2 or 3 (the client is
    /// not told which), `Peek` reads it (0 = never rolled).
    struct Dice;

    #[derive(Debug)]
    enum DiceOp {
        Roll,
        Peek,
    }

    impl Model for Dice {
        type State = u8;
        type Input = DiceOp;
        type Output = u8;

        fn init(&self) -> u8 {
            0
        }

        fn step(&self, state: &u8, input: &DiceOp, output: Option<&u8>) -> Vec<u8> {
            match (input, output) {
                (DiceOp::Roll, Some(_)) => vec![1, 2, 3],
                (DiceOp::Roll, None) => vec![1, 2, 3, *state],
                (DiceOp::Peek, Some(v)) if v == state => vec![*state],
                (DiceOp::Peek, Some(_)) => Vec::new(),
                (DiceOp::Peek, None) => vec![*state],
            }
        }
    }

    fn dice(call: u64, ret: u64, input: DiceOp, output: u8) -> Operation<DiceOp, u8> {
        Operation {
            client: 0,
            call,
            ret: Some(ret),
            input,
            output: Some(output),
        }
    }

    #[test]
    fn every_alternative_of_a_nondeterministic_step_is_tried() {
        use DiceOp::{Peek, Roll};
        // The last alternative (3) of the first roll, then the second one (2) of the other.
        let ops = [
            dice(0, 1, Roll, 0),
            dice(2, 3, Peek, 3),
            dice(4, 5, Roll, 0),
            dice(6, 7, Peek, 2),
            dice(8, 9, Peek, 2),
        ];
        assert_eq!(check(&Dice, &ops, BUDGET), Verdict::Linearizable);
        let ops = [
            dice(0, 1, Roll, 0),
            dice(2, 3, Peek, 3),
            dice(4, 5, Peek, 2),
        ];
        assert!(matches!(
            check(&Dice, &ops, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
        let ops = [dice(0, 1, Roll, 0), dice(2, 3, Peek, 4)];
        assert!(matches!(
            check(&Dice, &ops, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    /// A small linear congruential generator (Knuth's MMIX constants).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Generates a linearizable history: each operation is applied to a real register at a
    /// linearization point strictly inside its `[call, ret]` interval. With
    /// `indeterminate_every = Some(k)`, roughly one write in `k` loses its answer (and
    /// takes effect at its point or, half of the time, never).
    fn random_history(
        seed: u64,
        clients: u64,
        per_client: u64,
        indeterminate_every: Option<u64>,
    ) -> Vec<Op> {
        let mut rng = Lcg(seed);
        // (linearization point, op index, takes effect)
        let mut points: Vec<(u64, usize, bool)> = Vec::new();
        let mut ops: Vec<Op> = Vec::new();
        let mut next_value = 1;
        for client in 0..clients {
            let mut now = rng.below(5);
            for _ in 0..per_client {
                let call = now + rng.below(4);
                let ret = call + 2 + rng.below(30);
                let point = call + 1 + rng.below(ret - call - 1);
                let is_write = rng.below(2) == 0;
                let indeterminate =
                    is_write && indeterminate_every.is_some_and(|k| rng.below(k) == 0);
                let input = if is_write {
                    next_value += 1;
                    RegisterOp::Write(next_value)
                } else {
                    RegisterOp::Read
                };
                let effect = !indeterminate || rng.below(2) == 0;
                points.push((point, ops.len(), effect));
                ops.push(Operation {
                    client,
                    call,
                    ret: (!indeterminate).then_some(ret),
                    input,
                    output: None,
                });
                // Equal timestamps between a client's ops exercise the tie rule.
                now = ret + rng.below(3);
                if indeterminate {
                    // The client gives up after a timeout and moves on.
                    now += 50;
                }
            }
        }
        points.sort_unstable();
        let mut register = None;
        for (_, i, effect) in points {
            let op = &mut ops[i];
            match op.input {
                RegisterOp::Write(v) => {
                    if effect {
                        register = Some(v);
                    }
                    if op.ret.is_some() {
                        op.output = Some(RegisterOut::Written);
                    }
                }
                RegisterOp::Read => op.output = Some(RegisterOut::Value(register)),
            }
        }
        ops
    }

    #[test]
    fn random_linearizable_history_and_its_corruption() {
        for seed in [1, 2, 3] {
            let mut ops = random_history(seed, 8, 200, None);
            assert_eq!(ops.len(), 1600);
            assert_eq!(verdict(&ops), Verdict::Linearizable, "seed {seed}");

            // Corrupt one read in the middle to a value never written.
            let victim = (ops.len() / 2..ops.len())
                .find(|&i| matches!(ops[i].input, RegisterOp::Read))
                .expect("some read");
            ops[victim].output = Some(RegisterOut::Value(Some(u64::MAX)));
            match verdict(&ops) {
                Verdict::NotLinearizable { longest, stuck } => {
                    assert!(stuck.contains(&victim), "seed {seed}: {stuck:?}");
                    assert!(!longest.contains(&victim));
                }
                v => panic!("seed {seed}: expected NotLinearizable, got {v:?}"),
            }
        }
    }

    #[test]
    fn random_history_with_indeterminate_writes() {
        for seed in [7, 8, 9] {
            let ops = random_history(seed, 6, 60, Some(15));
            let indeterminate = ops.iter().filter(|o| o.ret.is_none()).count();
            assert!(indeterminate > 0, "seed {seed}");
            assert_eq!(verdict(&ops), Verdict::Linearizable, "seed {seed}");
        }
    }

    #[test]
    fn tiny_budget_gives_unknown() {
        let ops = random_history(4, 4, 20, None);
        assert_eq!(check(&Register, &ops, 1), Verdict::Unknown);
        assert_eq!(check(&Register, &ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn report_of_stale_read_points_at_valid_operations() {
        let ops = [w(1, 0, 10, 1), r(2, 20, 30, None)];
        match verdict(&ops) {
            Verdict::NotLinearizable { longest, stuck } => {
                assert!(!longest.is_empty());
                assert!(!stuck.is_empty());
                assert!(longest.iter().chain(&stuck).all(|&i| i < ops.len()));
                assert_eq!(longest, vec![0]);
                assert_eq!(stuck, vec![1]);
            }
            v => panic!("expected NotLinearizable, got {v:?}"),
        }
    }
}
