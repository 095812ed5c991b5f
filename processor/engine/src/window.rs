//! Windows of event time: which windows a timestamp falls in, and when a window closes.
//! Windows are aligned to the epoch, as Kafka Streams aligns them: a tumbling window is
//! one per timestamp, a hopping window of `size` advancing by `advance` is one of the
//! `size / advance` windows that cover it.

/// One window, `[start, end)` in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

/// The shape of the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Back-to-back windows of `size` ms.
    Tumbling {
        /// Window length.
        size: i64,
    },
    /// Windows of `size` ms starting every `advance` ms (`0 < advance <= size`).
    Hopping {
        /// Window length.
        size: i64,
        /// Distance between window starts.
        advance: i64,
    },
}

/// Windows with the grace period after a window's end during which records are still
/// added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    /// Their shape.
    pub shape: Shape,
    /// How long after its end a window still takes records (ms).
    pub grace: i64,
}

impl Windowing {
    /// Every window that holds timestamp `ts`, earliest first.
    pub fn assign(&self, ts: i64) -> Vec<Span> {
        match self.shape {
            Shape::Tumbling { size } => {
                let start = ts.div_euclid(size).saturating_mul(size);
                vec![Span {
                    start,
                    end: start.saturating_add(size),
                }]
            }
            Shape::Hopping { size, advance } => {
                // The latest start at or before ts, then back by `advance` while the
                // window still reaches ts.
                let last = ts.div_euclid(advance).saturating_mul(advance);
                let mut spans = Vec::new();
                let mut start = last;
                while start.saturating_add(size) > ts {
                    spans.push(Span {
                        start,
                        end: start.saturating_add(size),
                    });
                    match start.checked_sub(advance) {
                        Some(s) => start = s,
                        None => break,
                    }
                }
                spans.reverse();
                spans
            }
        }
    }

    /// The window starting at `start`.
    pub fn span_at(&self, start: i64) -> Span {
        let size = match self.shape {
            Shape::Tumbling { size } | Shape::Hopping { size, .. } => size,
        };
        Span {
            start,
            end: start.saturating_add(size),
        }
    }

    /// Stream time at which `span` closes: no record is added to it from then on.
    pub fn closes_at(&self, span: Span) -> i64 {
        span.end.saturating_add(self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tumbling(size: i64, grace: i64) -> Windowing {
        Windowing {
            shape: Shape::Tumbling { size },
            grace,
        }
    }

    #[test]
    fn a_tumbling_window_holds_each_timestamp_once() {
        let w = tumbling(10, 5);
        assert_eq!(w.assign(0), vec![Span { start: 0, end: 10 }]);
        assert_eq!(w.assign(19), vec![Span { start: 10, end: 20 }]);
        assert_eq!(w.assign(-1), vec![Span { start: -10, end: 0 }]);
        assert_eq!(w.closes_at(Span { start: 10, end: 20 }), 25);
        assert_eq!(w.span_at(30), Span { start: 30, end: 40 });
    }

    #[test]
    fn hopping_windows_are_every_window_that_covers_the_timestamp() {
        let w = Windowing {
            shape: Shape::Hopping {
                size: 10,
                advance: 5,
            },
            grace: 0,
        };
        assert_eq!(
            w.assign(12),
            vec![Span { start: 5, end: 15 }, Span { start: 10, end: 20 }]
        );
        assert_eq!(
            w.assign(10),
            vec![Span { start: 5, end: 15 }, Span { start: 10, end: 20 }]
        );
        let thirds = Windowing {
            shape: Shape::Hopping {
                size: 9,
                advance: 3,
            },
            grace: 0,
        };
        let spans = thirds.assign(7);
        assert_eq!(spans.len(), 3);
        assert!(spans.iter().all(|s| s.start <= 7 && 7 < s.end), "{spans:?}");
        assert_eq!(spans[0].start, 0);
    }
}
