"""The PTX analysis of ``tests/ptx_metrics.py`` on small hand-written PTX.

Each snippet is short enough to count by hand; the comments give the count.
No GPU, no compilation: only ``test_ptxas_usage_of_a_tiny_kernel`` runs
ptxas, and it skips when the nvidia-cuda-nvcc wheel is missing.
"""

import doctest

import pytest

import ptx_metrics
from ptx_metrics import metrics

# Two arrays (param_0 in, param_1 out); each trip moves one 16-byte vector of
# 4 floats each way: 7 instructions a trip, 7 / 4 per element.
VECTOR_LOOP = """
    ld.param.u64 %rd1, [k_param_0];
    ld.param.u64 %rd2, [k_param_1];
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
$L__BB0_1:
    add.s64 %rd5, %rd3, %rd9;
    ld.global.nc.v4.f32 {%f1, %f2, %f3, %f4}, [%rd5];
    add.s64 %rd6, %rd4, %rd9;
    st.global.v4.f32 [%rd6+16], {%f4, %f3, %f2, %f1};
    add.s64 %rd9, %rd9, 16;
    setp.lt.u64 %p1, %rd9, %rd8;
    @%p1 bra $L__BB0_1;
    ret;
"""


def test_a_vector_loop_moves_four_floats_a_trip():
    m = metrics(VECTOR_LOOP, 4)
    assert m["instructions"] == 12
    assert m["memory"] == {("ld.global.nc", 16, 4): 1, ("st.global", 16, 4): 1}
    assert m["loops"] == [{"label": "$L__BB0_1", "size": 7, "tree": False, "streaming": True}]
    assert m["row"]["label"] == "entry"  # no barrier anywhere: the kernel is the row region
    # Read as scalars (one element an access) this would be 7.0 and 1.0.
    assert m["per_element"] == 7 / 4
    assert m["loads_per_element"] == 1 / 4 and m["load_bytes"] == [16]
    assert m["vector_stores"] is True


def test_float16_moves_as_raw_bits_of_the_storage_width():
    scalar = """
        cvta.to.global.u64 %rd3, %rd1;
        cvta.to.global.u64 %rd4, %rd2;
    $L__BB0_1:
        ld.global.u16 %rs1, [%rd3];          // x, one float16
        ld.global.f32 %f2, [%rd4];           // weight, one float32
        cvt.f32.f16 %f1, %rs1;
        mul.f32 %f1, %f1, %f2;
        cvt.rn.f16.f32 %rs2, %f1;
        st.global.u16 [%rd3], %rs2;
        @%p1 bra $L__BB0_1;                  // 7 instructions, 1 element
    """
    m = metrics(scalar, 2)
    assert m["memory"] == {("ld.global", 2, 1): 1, ("ld.global", 4, 1): 1,
                           ("st.global", 2, 1): 1}
    assert m["per_element"] == 7 and m["load_bytes"] == [2, 4]
    assert m["vector_stores"] is False
    packed = """
        cvta.to.global.u64 %rd3, %rd1;
        cvta.to.global.u64 %rd4, %rd2;
    $L__BB0_1:
        ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd3];       // x: 8 float16
        ld.global.v4.f32 {%f1, %f2, %f3, %f4}, [%rd4];       // weight: 4 floats
        ld.global.v4.f32 {%f5, %f6, %f7, %f8}, [%rd4+16];    // and 4 more
        st.global.v4.b32 [%rd3], {%r1, %r2, %r3, %r4};       // y: 8 float16
        @%p1 bra $L__BB0_1;                                  // 5 instructions, 8 elements
    """
    m = metrics(packed, 2)
    assert m["memory"] == {("ld.global", 16, 4): 3, ("st.global", 16, 4): 1}
    assert m["hot"][0]["elements"] == 8  # a .b32 lane holds 2 float16, a .f32 lane 1 float
    assert m["per_element"] == 5 / 8 and m["loads_per_element"] == 3 / 8


NESTED = """
    cvta.to.global.u64 %rd2, %rd1;
    mov.u64 %rd3, _cudapy_smem_0;
$L__BB0_1:                              // row loop: 15 instructions
    ld.global.f32 %f9, [%rd2];          // a per-row value: not a pass
$L__BB0_2:                              // pass: 4 instructions, 1 element
    ld.global.f32 %f1, [%rd2];
    add.f32 %f5, %f5, %f1;
    setp.lt.u64 %p1, %rd4, %rd9;
    @%p1 bra $L__BB0_2;
    st.shared.f32 [%rd3], %f5;
    bar.sync 0;                         // once a row
    mov.u64 %rd6, 128;
$L__BB0_3:                              // tree: log2(128) = 7 trips
    ld.shared.f32 %f6, [%rd3+4];
    bar.sync 0;                         // once a trip
    shr.u64 %rd6, %rd6, 1;
    setp.ne.s64 %p2, %rd6, 0;
    @%p2 bra $L__BB0_3;
    bar.sync 0;                         // once a row
    @%p3 bra $L__BB0_1;
    ret;
"""


def test_nested_loops_a_pass_and_a_tree_inside_the_row_loop():
    m = metrics(NESTED, 4)
    assert [(loop["label"], loop["size"], loop["tree"], loop["streaming"])
            for loop in m["loops"]] == [("$L__BB0_1", 15, False, False),
                                        ("$L__BB0_2", 4, False, True),
                                        ("$L__BB0_3", 5, True, False)]
    assert m["row"] == {"label": "$L__BB0_1", "once": 2, "per_level": 1, "in_loops": 0,
                        "shfl": 0}
    assert m["bar_sync"] == 3
    # The row loop's own instructions and the tree are per row: only the pass counts.
    assert m["per_element"] == 4 and [h["label"] for h in m["hot"]] == ["$L__BB0_2"]


def test_a_forward_branch_is_no_loop_and_the_longer_arm_counts():
    code = """
        cvta.to.global.u64 %rd3, %rd1;
    $L__BB0_1:
        ld.global.f32 %f1, [%rd3];
        @%p1 bra $L__BB0_2;             // forward: skips 3 instructions
        mul.f32 %f2, %f1, %f1;
        mul.f32 %f2, %f2, %f1;
        mul.f32 %f2, %f2, %f1;
    $L__BB0_2:
        st.global.f32 [%rd3], %f2;
        add.s64 %rd3, %rd3, 4;
        setp.lt.u64 %p2, %rd3, %rd8;
        @%p2 bra $L__BB0_1;             // backward: the loop, 9 instructions
    """
    m = metrics(code, 4)
    assert [loop["label"] for loop in m["loops"]] == ["$L__BB0_1"]
    assert m["per_element"] == 9  # the path through the three mul
    assert metrics(code.replace("mul.f32 %f2, %f2, %f1;\n", ""), 4)["per_element"] == 7


def test_predicated_and_uniform_backward_branches_close_loops():
    code = """
    $L__BB0_1:
        ld.global.f32 %f1, [%rd3];
    $L__BB0_2:
        ld.global.f32 %f2, [%rd4];
        @!%p1 bra $L__BB0_2;            // negated guard, backward
        bra.uni $L__BB0_1;              // uniform, backward
    """
    m = metrics(code, 4)
    assert [(loop["label"], loop["size"]) for loop in m["loops"]] == [
        ("$L__BB0_1", 4), ("$L__BB0_2", 2)]
    # A branch out of the module (no such label) is no loop and ends a path.
    assert metrics(code.replace("$L__BB0_1;", "$elsewhere;"), 4)["loops"] == [m["loops"][1]]


def test_state_spaces_with_scopes_and_cache_hints():
    m = metrics("""
        ld.shared::cta.v2.f64 {%fd1, %fd2}, [%rd1];
        ld.global.L1::no_allocate.v2.f64 {%fd3, %fd4}, [%rd2];
        st.f32 [%rd3], %f1;
    """, 8)
    assert m["memory"] == {("ld.shared", 16, 2): 1, ("ld.global", 16, 2): 1,
                           ("st.generic", 4, 1): 1}


def test_labels_directives_comments_and_braces_are_no_instructions():
    code = """
    .version 8.8
    .target sm_90
    .visible .entry k(
        .param .u64 k_param_0
    )
    {
        .reg .b64 %rd<3>;
        .loc 1 2 3
        // begin inline asm
        {
        .reg .b32 t;
        mov.u32 %r1, %dynamic_smem_size;
        }
    $L__BB0_1:
        call.uni (retval0),
            helper,
            (param0);
        ret;
    }
    """
    assert metrics(code, 4)["instructions"] == 3  # mov, the call (over three lines), ret
    assert metrics("{\n mov.u32 %r1, %dynamic_smem_size;\n}", 4)["instructions"] == 1


def test_versions_of_a_pass_are_alternatives():
    code = """
        cvta.to.global.u64 %rd3, %rd1;
        cvta.to.global.u64 %rd4, %rd2;
        @%p9 bra $L__BB0_3;             // has_weight: loop 1, else loop 3
    $L__BB0_1:
        ld.global.f32 %f1, [%rd3];
        ld.global.f32 %f2, [%rd4];
        mul.f32 %f1, %f1, %f2;
        st.global.f32 [%rd3], %f1;
        @%p1 bra $L__BB0_1;             // 5 instructions
        bra.uni $L__BB0_5;
    $L__BB0_3:
        ld.global.f32 %f1, [%rd3];
        st.global.f32 [%rd3], %f1;
        @%p1 bra $L__BB0_3;             // 3 instructions
    $L__BB0_5:
        ret;
    """
    m = metrics(code, 4)
    assert [loop["streaming"] for loop in m["loops"]] == [True, True]
    assert m["per_element"] == 5 and m["loads_per_element"] == 2  # not 5 + 3, 2 + 1


# A main loop of 2 elements a trip, then its remainder of 1: one pass.
MAIN_AND_REMAINDER = """
    cvta.to.global.u64 %rd3, %rd1;
$L__BB0_1:
    ld.global.f32 %f1, [%rd3];
    ld.global.f32 %f2, [%rd3+4];
    add.f32 %f5, %f1, %f2;
    @%p1 bra $L__BB0_1;                 // 4 instructions, 2 elements
$L__BB0_2:
    ld.global.f32 %f1, [%rd3];
    add.f32 %f5, %f5, %f1;
    @%p2 bra $L__BB0_2;                 // 3 instructions, 1 element
    ret;
"""


def test_a_remainder_loop_is_the_same_pass_but_a_barrier_starts_another():
    m = metrics(MAIN_AND_REMAINDER, 4)
    assert [(h["label"], h["elements"]) for h in m["hot"]] == [("$L__BB0_1", 2)]
    assert m["per_element"] == 2
    two = metrics(MAIN_AND_REMAINDER.replace("$L__BB0_2:", "bar.sync 0;\n$L__BB0_2:"), 4)
    assert [h["label"] for h in two["hot"]] == ["$L__BB0_1", "$L__BB0_2"]
    assert two["per_element"] == 2 + 3


def test_a_fully_unrolled_warp_kernel_streams_in_the_kernel_body():
    code = """
        cvta.to.global.u64 %rd3, %rd1;      // x
        cvta.to.global.u64 %rd4, %rd2;      // y
        cvta.to.global.u64 %rd5, %rd6;      // mean
        ld.global.f32 %f9, [%rd3];          // the shift: x once more
        ld.global.f32 %f1, [%rd3];
        ld.global.f32 %f2, [%rd3+128];
        @%p1 bra $L__BB0_1;                 // a column guard skips one element
        ld.global.f32 %f3, [%rd3+256];
    $L__BB0_1:
        shfl.sync.bfly.b32 %r1, %r2, 16, 31, -1;
        st.global.f32 [%rd4], %f1;
        st.global.f32 [%rd4+128], %f2;
        st.global.f32 [%rd4+256], %f3;
        st.global.f32 [%rd5], %f9;
        ret;                                // 14 instructions
    """
    m = metrics(code, 4)
    assert m["loops"] == [] and m["shfl_sync"] == 1 and m["row"]["shfl"] == 1
    # x moves 4, y 3, mean 1: the rule's E is 3, the elements each thread owns.
    assert m["hot"][0]["elements"] == 3 and m["per_element"] == 14 / 3


def test_the_table_shows_passes_barriers_and_missing_ptxas():
    text = ptx_metrics.table([("fwd_x", "float32", metrics(NESTED, 4), None),
                              ("bwd_y", "float16", metrics(MAIN_AND_REMAINDER.replace(
                                  "$L__BB0_2:", "bar.sync 0;\n$L__BB0_2:"), 4),
                               {"registers": 40, "spill_stores": 8, "spill_loads": 4})])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[1] == "|---|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| `fwd_x` | float32 | 4.0 | 2 + 1·L | 0 / 0 | 1.00 (4 B) | no | ? | ? |"
    assert lines[3] == ("| `bwd_y` | float16 | 5.0 = 2.0 + 3.0 | 1 | 0 / 0 | 2.00 (4 B) | no "
                        "| 40 | 12 |")


def test_docstring_examples_run():
    failed, tried = doctest.testmod(ptx_metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failed == 0 and tried >= 4


_TINY = """.version 8.0
.target {arch}
.address_size 64

.visible .entry tiny(.param .u64 tiny_param_0)
{{
    .reg .b64 %rd<3>;
    .reg .f32 %f<2>;
    ld.param.u64 %rd1, [tiny_param_0];
    cvta.to.global.u64 %rd2, %rd1;
    ld.global.f32 %f1, [%rd2];
    st.global.f32 [%rd2+4], %f1;
    ret;
}}
"""


def test_command_reads_a_folder_of_ptx(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ptx_metrics, "find_ptxas", lambda: None)
    for name in ("bwd_new.float16.ptx", "fwd_warp_vector.float64.ptx", "fwd_warp_vector.float16.ptx"):
        (tmp_path / name).write_text(_TINY.format(arch="sm_90"))
    text = ptx_metrics.main(["--arch", "sm_90", "--ptx-dir", str(tmp_path)])
    assert capsys.readouterr().out == text + "\n"
    # Known kernels in numba_ln.ptx's order, then the others; dtypes in order.
    assert [line.split(" | ")[:2] for line in text.splitlines()[2:]] == [
        ["| `fwd_warp_vector`", "float16"], ["| `fwd_warp_vector`", "float64"], ["| `bwd_new`", "float16"]]
    with pytest.raises(SystemExit):
        ptx_metrics.main(["--arch", "sm_80", "--ptx-dir", str(tmp_path)])
    assert "is not PTX for sm_80" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ptxas():
    path = ptx_metrics.find_ptxas()
    if path is None:
        pytest.skip("ptxas not found: install the GPU extras, pip install 'numba-ln[cuda]'")
    return path


def test_ptxas_usage_of_a_tiny_kernel(ptxas, tmp_path):
    path = tmp_path / "tiny.ptx"
    path.write_text(_TINY.format(arch="sm_90"))
    usage = ptx_metrics.ptxas_usage(path, "sm_90", ptxas)
    assert usage["spill_stores"] == usage["spill_loads"] == usage["stack"] == 0
    assert 1 <= usage["registers"] <= 16
