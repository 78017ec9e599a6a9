// Helpers shared by the mixin's files (hidden from the output: plain functions).
{
  // The matchers of a selector: `base` (the sidecar selector) and `extra`, either empty.
  selector(base, extra=''):: std.join(', ', std.filter(function(s) s != '', [base, extra])),

  // A `by (...)` label list: the fleet labels, then the others.
  byLabels(fleet, others=[]):: std.join(', ', fleet + others),
}
