"""The training data layer: layouts, split rules, validated loading and augmentation.

Everything runs on tiny volumes generated into tmp_path; one optional test reads
two real LA cases and skips, saying why, when the LA folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from CAMLSegmentationLib.inference.preprocess import normalize_intensity
from CAMLSegmentationLib.progress import ProgressEvent
from CAMLSegmentationLib.training import data
from CAMLSegmentationLib.training.data import DataError

REPO = Path(__file__).resolve().parents[2]
LA_ROOT = Path(os.environ.get("CAML_LA_ROOT", REPO.parent / "shared" / "data" / "LA"))

SHAPE = (12, 10, 8)


# --------------------------------------------------------------------------- fixtures


def blob(shape=SHAPE, seed=0):
    """A random image and a binary label with a box of ones."""
    rng = np.random.default_rng(seed)
    image = rng.normal(5.0, 2.0, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:6, 3:7, 1:5] = 1
    return image, label


def write_la(root: Path, ids: Sequence[str], unlabeled: Sequence[str] = (),
             order: Optional[Sequence[str]] = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n, case_id in enumerate(ids):
        image, label = blob(seed=n)
        image = (image - image.mean()) / image.std()
        folder = root / data.LA_CASES_FOLDER / case_id
        folder.mkdir(parents=True)
        with h5py.File(folder / data.LA_FILE_NAME, "w") as f:
            f.create_dataset("image", data=image.astype(np.float32))
            if case_id not in unlabeled:
                f.create_dataset("label", data=label)
    (root / "train.list").write_text("\n".join(order if order is not None else ids) + "\n")
    return root


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.5, 2.0), origin=(0.0, 0.0, 0.0),
                direction=None) -> Path:
    """Write an [i, j, k] array with SimpleITK (which wants [k, j, i])."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_generic(root: Path, labeled: Sequence[str], unlabeled: Sequence[str] = (), ext=".nrrd",
                  images="images", labels="labels", channel="", spacing=(1.0, 1.5, 2.0)) -> Path:
    for n, case_id in enumerate(list(labeled) + list(unlabeled)):
        image, label = blob(seed=n)
        write_image(root / images / f"{case_id}{channel}{ext}", image, spacing)
        if case_id in labeled:
            write_image(root / labels / f"{case_id}{ext}", label, spacing)
    return root


def write_list(path: Path, ids: Sequence[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


# --------------------------------------------------------------------------- id lists


def test_read_id_list_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "ids.list"
    path.write_text("# labeled cases\nA\n\n  B  # re-annotated\n#C\nD\n")
    assert data.read_id_list(path) == ["A", "B", "D"]


def test_read_id_list_errors(tmp_path):
    with pytest.raises(DataError, match="ids.list: case list not found"):
        data.read_id_list(tmp_path / "ids.list")
    empty = tmp_path / "empty.list"
    empty.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="empty.list: case list is empty"):
        data.read_id_list(empty)
    dup = tmp_path / "dup.list"
    dup.write_text("A\nB\nA\n")
    with pytest.raises(DataError, match=r"dup.list: case id 'A' appears twice \(lines 1 and 3\)"):
        data.read_id_list(dup)


# --------------------------------------------------------------------------- LA layout


def test_la_layout_order_labels_and_loading(tmp_path):
    root = write_la(tmp_path / "LA", ["c1", "c2", "c3"], order=["c3", "c1", "c2"], unlabeled=["c2"])
    source = data.open_source(root)
    assert source.layout == "LA"
    assert source.case_ids() == ["c3", "c1", "c2"]  # train.list order, not name order
    assert [source.has_label(i) for i in source.case_ids()] == [True, True, False]

    case = source.load("c1")
    with h5py.File(root / data.LA_CASES_FOLDER / "c1" / data.LA_FILE_NAME, "r") as f:
        stored = f["image"][()]
    assert case.spacing == (0.625, 0.625, 0.625)
    assert case.image.dtype == np.float32 and case.image.shape == SHAPE
    # Normalised like every other input (the release's own z-scoring is just a scale here).
    np.testing.assert_allclose(case.image, normalize_intensity(stored), atol=1e-6)
    assert case.label.dtype == np.uint8 and case.label.sum() == 4 * 4 * 4

    assert source.load("c1", with_label=False).label is None
    assert source.load("c2", with_label=False).image.shape == SHAPE
    with pytest.raises(DataError, match=r"c2.*no 'label' dataset"):
        source.load("c2")
    with pytest.raises(DataError, match="unknown case id 'nope'"):
        source.load("nope")


def test_la_layout_missing_case_file_is_named(tmp_path):
    root = write_la(tmp_path / "LA", ["c1"], order=["c1", "ghost"])
    with pytest.raises(DataError, match=r"1 case\(s\) of train.list have no .*: ghost"):
        data.open_source(root)


def test_la_layout_without_train_list_is_recognised_by_its_case_folder(tmp_path):
    root = write_la(tmp_path / "LA", ["c10", "c2", "c1"])
    (root / "train.list").unlink()
    (root / "2018LA_Seg_Training Set" / "notes").mkdir()  # a folder without the file is no case
    source = data.open_source(root)
    assert source.layout == "LA" and source.case_ids() == ["c1", "c2", "c10"]
    empty = tmp_path / "empty"
    (empty / "2018LA_Seg_Training Set" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="no case folder holds mri_norm2.h5"):
        data.open_source(empty)


# --------------------------------------------------------------------------- generic layout


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_generic_layout_images_labels(tmp_path, ext):
    root = write_generic(tmp_path / "d", ["case10", "case2"], ["case1"], ext=ext)
    source = data.open_source(root)
    assert source.layout == "generic"
    assert source.case_ids() == ["case1", "case2", "case10"]  # natural order of the names
    assert [source.has_label(i) for i in source.case_ids()] == [False, True, True]

    case = source.load("case2")
    image, label = blob(seed=1)
    assert case.spacing == (1.0, 1.5, 2.0)
    assert case.image.shape == SHAPE and case.image.dtype == np.float32
    np.testing.assert_allclose(case.image, normalize_intensity(image), atol=1e-5)  # as inference does
    np.testing.assert_array_equal(case.label, label)  # no axis swapped on the way through SimpleITK
    assert case.label.dtype == np.uint8

    assert source.load("case1", with_label=False).label is None
    with pytest.raises(DataError, match=r"case1.*has no label file"):
        source.load("case1")


def test_generic_layout_nnunet_names(tmp_path):
    root = write_generic(tmp_path / "d", ["la_001", "la_002"], ["la_003"], ext=".nii.gz",
                         images="imagesTr", labels="labelsTr", channel="_0000")
    source = data.open_source(root)
    assert source.case_ids() == ["la_001", "la_002", "la_003"]
    assert source.has_label("la_002") and not source.has_label("la_003")
    assert source.load("la_001").label.sum() == 64


def test_generic_layout_nnunet_rejects_extra_channels_and_bad_names(tmp_path):
    root = write_generic(tmp_path / "d", ["a"], ext=".nii.gz", images="imagesTr", labels="labelsTr",
                         channel="_0000")
    write_image(root / "imagesTr" / "a_0001.nii.gz", blob()[0])
    with pytest.raises(DataError, match="a_0001.nii.gz: extra input channel 0001"):
        data.open_source(root)
    (root / "imagesTr" / "a_0001.nii.gz").unlink()
    write_image(root / "imagesTr" / "b.nii.gz", blob()[0])
    with pytest.raises(DataError, match="b.nii.gz: nnU-Net image names end in '_0000'"):
        data.open_source(root)


def test_generic_train_list_fixes_set_and_order(tmp_path):
    root = write_generic(tmp_path / "d", ["a", "b", "c"])
    write_list(root / "train.list", ["c", "a"])
    assert data.open_source(root).case_ids() == ["c", "a"]
    write_list(root / "train.list", ["c", "zz"])
    with pytest.raises(DataError, match=r"train.list: case id\(s\) with no image .*: zz"):
        data.open_source(root)


def test_generic_layout_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing: data folder not found"):
        data.open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no recognisable cases"):
        data.open_source(tmp_path / "empty")
    (tmp_path / "noimg" / "images").mkdir(parents=True)
    (tmp_path / "noimg" / "images" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="images: no image files"):
        data.open_source(tmp_path / "noimg")


def test_generic_layout_duplicate_and_orphan_files(tmp_path):
    root = write_generic(tmp_path / "d", ["a"])
    write_image(root / "images" / "a.nii.gz", blob()[0])
    with pytest.raises(DataError, match=r"case 'a' has two files: a.nii.gz and a.nrrd"):
        data.open_source(root)
    root = write_generic(tmp_path / "e", ["a"])
    write_image(root / "labels" / "b.nrrd", blob()[1])
    with pytest.raises(DataError, match=r"label file\(s\) without an image .*: b.nrrd"):
        data.open_source(root)


# --------------------------------------------------------------------------- validation of cases


def test_label_shape_mismatch_is_named(tmp_path):
    root = write_generic(tmp_path / "d", ["a"], ["b"])
    write_image(root / "labels" / "a.nrrd", np.zeros((12, 10, 7), np.uint8))
    with pytest.raises(DataError, match=r"labels/a.nrrd: label shape \(12, 10, 7\) differs from image "
                                        r"shape \(12, 10, 8\)"):
        data.open_source(root).load("a")


@pytest.mark.parametrize("what,kwargs", [
    ("spacing", {"spacing": (1.0, 1.5, 2.5)}),
    ("origin", {"origin": (0.0, 3.0, 0.0)}),
    ("direction", {"direction": (0, 1, 0, 1, 0, 0, 0, 0, 1)}),
])
def test_label_geometry_mismatch_is_named(tmp_path, what, kwargs):
    root = write_generic(tmp_path / "d", ["a"])
    args = {"spacing": (1.0, 1.5, 2.0)}
    args.update(kwargs)
    write_image(root / "labels" / "a.nrrd", blob()[1], **args)
    with pytest.raises(DataError, match=rf"labels/a.nrrd: label geometry differs from image a.nrrd: {what}"):
        data.open_source(root).load("a")


def test_non_binary_label_names_the_values(tmp_path):
    root = write_generic(tmp_path / "d", ["a"])
    label = blob()[1] * 255
    label[0, 0, 0] = 2
    write_image(root / "labels" / "a.nrrd", label)
    with pytest.raises(DataError, match=r"labels/a.nrrd.*must be binary.*found values 0, 2, 255"):
        data.open_source(root).load("a")
    # The same file is fine for the unlabeled stream, which never reads the label.
    assert data.open_source(root).load("a", with_label=False).label is None


def test_multi_component_and_2d_images_are_rejected(tmp_path):
    root = write_generic(tmp_path / "d", ["a"], ["b", "c"])
    rgb = sitk.GetImageFromArray(np.zeros((8, 10, 12, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(root / "images" / "b.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((10, 12), np.float32)), str(root / "images" / "c.nrrd"))
    source = data.open_source(root)
    with pytest.raises(DataError, match=r"images/b.nrrd: expected one component per voxel, found 3"):
        source.load("b", with_label=False)
    with pytest.raises(DataError, match=r"images/c.nrrd: expected a 3D image, found 2D"):
        source.load("c", with_label=False)


def test_nan_and_constant_images_are_rejected(tmp_path):
    root = write_generic(tmp_path / "d", ["a"], ["b", "c"])
    bad = blob()[0]
    bad[3, 3, 3] = np.nan
    write_image(root / "images" / "b.nrrd", bad)
    write_image(root / "images" / "c.nrrd", np.full(SHAPE, 7.0, np.float32))
    source = data.open_source(root)
    with pytest.raises(DataError, match=r"images/b.nrrd.*NaN or Inf"):
        source.load("b", with_label=False)
    with pytest.raises(DataError, match=r"images/c.nrrd.*constant"):
        source.load("c", with_label=False)


def test_la_file_with_infinite_voxel_is_named(tmp_path):
    root = write_la(tmp_path / "LA", ["c1"])
    path = root / data.LA_CASES_FOLDER / "c1" / data.LA_FILE_NAME
    with h5py.File(path, "r+") as f:
        image = f["image"][()]
        image[1, 1, 1] = np.inf
        f["image"][...] = image
    with pytest.raises(DataError, match=r"c1/mri_norm2.h5: 1 voxels are NaN or Inf"):
        data.open_source(root).load("c1")


# --------------------------------------------------------------------------- resampling


def test_resampling_to_target_spacing(tmp_path):
    root = write_generic(tmp_path / "d", ["a"], spacing=(1.0, 1.5, 2.0))
    case = data.open_source(root).load("a", target_spacing=(0.5, 0.5, 1.0))
    assert case.spacing == (0.5, 0.5, 1.0)
    assert case.image.shape == (24, 30, 16)  # same extent: 12*1/0.5, 10*1.5/0.5, 8*2/1
    assert case.label.shape == case.image.shape
    assert case.label.dtype == np.uint8 and set(np.unique(case.label)) == {0, 1}
    # the label box keeps its physical size: 4*4*4 voxels of 1*1.5*2 mm = 192 mm^3 = 768 new voxels
    assert int(case.label.sum()) == 768
    # the same spacing leaves the grid alone
    same = data.open_source(root).load("a", target_spacing=(1.0, 1.5, 2.0))
    assert same.image.shape == SHAPE


def test_la_resampling_shrinks_and_keeps_labels_binary(tmp_path):
    root = write_la(tmp_path / "LA", ["c1"])
    case = data.open_source(root).load("c1", target_spacing=(1.25, 1.25, 1.25))
    assert case.image.shape == (6, 5, 4)
    assert case.label.shape == (6, 5, 4) and set(np.unique(case.label)) <= {0, 1}
    assert case.label.sum() > 0


# --------------------------------------------------------------------------- split


def la_source(tmp_path, n=10, unlabeled=()):
    ids = [f"c{i:02d}" for i in range(n)]
    return data.open_source(write_la(tmp_path / "LA", ids, unlabeled=unlabeled)), ids


def test_split_first_n_labeled_rest_unlabeled(tmp_path):
    source, ids = la_source(tmp_path)
    split = data.make_split(source, labeled=3)
    assert split.labeled == ids[:3]
    assert split.unlabeled == ids[3:]
    assert split.validation == []


def test_split_validation_cases_stay_in_the_unlabeled_pool(tmp_path):
    source, ids = la_source(tmp_path)
    val = write_list(tmp_path / "val.list", ids[-2:])
    split = data.make_split(source, labeled=2, val_list=val)
    assert split.validation == ids[-2:]
    assert split.unlabeled == ids[2:]
    assert data.make_split(source, labeled=2, val_last=2).to_dict() == split.to_dict()


def test_split_unlabeled_list_may_reuse_labeled_images_but_never_validation(tmp_path):
    """With every training case labeled, the labeled images are the unlabeled stream: the
    validation images stay unseen, so their scores are not transductive."""
    source, ids = la_source(tmp_path)
    unl = write_list(tmp_path / "unl.list", ids[:8])
    split = data.make_split(source, labeled=8, val_last=2, unlabeled_list=unl)
    assert split.labeled == ids[:8] and split.unlabeled == ids[:8] and split.validation == ids[8:]
    with pytest.raises(data.DataError, match="validation case.*c09"):
        data.make_split(source, labeled=8, val_last=2, unlabeled_list=write_list(tmp_path / "u2.list", ids[7:]))
    with pytest.raises(data.DataError, match="unknown case id.*'nope'"):
        data.make_split(source, labeled=8, unlabeled_list=write_list(tmp_path / "u3.list", ["nope"]))


def test_split_from_labeled_list(tmp_path):
    source, ids = la_source(tmp_path)
    lab = write_list(tmp_path / "lab.list", [ids[5], ids[1]])
    split = data.make_split(source, labeled_list=lab)
    assert split.labeled == [ids[5], ids[1]]
    assert split.unlabeled == [i for i in ids if i not in (ids[5], ids[1])]


def test_split_labeled_n_skips_unlabeled_cases(tmp_path):
    source, ids = la_source(tmp_path, n=5, unlabeled=["c01"])
    assert data.make_split(source, labeled=2).labeled == ["c00", "c02"]
    assert "c01" in data.make_split(source, labeled=2).unlabeled


def test_split_errors(tmp_path):
    source, ids = la_source(tmp_path, n=6, unlabeled=["c05"])
    lab = write_list(tmp_path / "lab.list", ids[:2])
    with pytest.raises(DataError, match="exactly one of"):
        data.make_split(source)
    with pytest.raises(DataError, match="exactly one of"):
        data.make_split(source, labeled=2, labeled_list=lab)
    with pytest.raises(DataError, match=r"7 labeled cases asked for, but only 5 of the 6 cases have a label"):
        data.make_split(source, labeled=7)
    with pytest.raises(DataError, match=r"1 labeled case\(s\), but training takes 2 labeled case\(s\) "
                                        r"per batch"):
        data.make_split(source, labeled=1, min_labeled=2)
    unknown = write_list(tmp_path / "unknown.list", ["c00", "zz9"])
    with pytest.raises(DataError, match=r"unknown.list: unknown case id\(s\) 'zz9'"):
        data.make_split(source, labeled_list=unknown)
    dup = write_list(tmp_path / "dup.list", ["c00", "c01", "c00"])
    with pytest.raises(DataError, match=r"dup.list: case id 'c00' appears twice"):
        data.make_split(source, labeled_list=dup)
    nolabel = write_list(tmp_path / "nolabel.list", ["c00", "c05"])
    with pytest.raises(DataError, match=r"nolabel.list: labeled case\(s\) without a label: c05"):
        data.make_split(source, labeled_list=nolabel)
    with pytest.raises(DataError, match=r"nolabel.list: validation case\(s\) without a label: c05"):
        data.make_split(source, labeled=1, val_list=nolabel)
    overlap = write_list(tmp_path / "overlap.list", ["c01", "c04"])
    with pytest.raises(DataError, match=r"validation case\(s\) also labeled for training "
                                        r"\(.*overlap.list\): c01"):
        data.make_split(source, labeled=2, val_list=overlap)


# --------------------------------------------------------------------------- load_cases


def test_load_cases_reports_progress_in_order(tmp_path):
    root = write_generic(tmp_path / "d", ["a", "b", "c"])
    source = data.open_source(root)
    events = []
    cases = data.load_cases(source, ["c", "a"], progress=events.append)
    assert [c.case_id for c in cases] == ["c", "a"]
    assert all(isinstance(e, ProgressEvent) and e.stage == "load" for e in events)
    assert [(e.done, e.total) for e in events] == [(0, 2), (1, 2), (2, 2)]
    unlabeled = data.load_cases(source, ["b"], target_spacing=(2.0, 3.0, 4.0), with_label=False)
    assert unlabeled[0].label is None and unlabeled[0].image.shape == (6, 5, 4)


# --------------------------------------------------------------------------- augmentation


def marked(shape=(9, 7, 5)):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = np.zeros(shape, np.uint8)
    label[1, 2, 3] = 1
    image[1, 2, 3] = -100.0  # the marker voxel
    return image, label


def test_rot_flip_keeps_image_and_label_aligned():
    image, label = marked()
    rng = np.random.default_rng(0)
    seen_shapes = set()
    seen_positions = set()
    for _ in range(40):
        img, lab = data.random_rot_flip(image, label, rng)
        assert img.flags.c_contiguous and lab.flags.c_contiguous
        assert img.shape == lab.shape and img.shape[2] == 5  # only the (i, j) plane turns
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        pos = tuple(np.argwhere(lab == 1)[0])
        assert img[pos] == -100.0
        assert sorted(img.ravel().tolist()) == sorted(image.ravel().tolist())
        seen_shapes.add(img.shape)
        seen_positions.add(pos)
    assert seen_shapes == {(9, 7, 5), (7, 9, 5)}
    # The official transform always flips after rotating, and rot90(k) then flip(0) equals
    # rot90(k + 2) then flip(1): only the 4 reflections of the (i, j) plane ever occur.
    assert seen_positions == {(7, 2, 3), (1, 4, 3), (4, 7, 3), (2, 1, 3)}


def test_rot_flip_matches_official_transform():
    image, label = marked()
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    img, lab = data.random_rot_flip(image, label, rng)
    replay = np.random.default_rng()
    replay.bit_generator.state = state
    k, axis = int(replay.integers(0, 4)), int(replay.integers(0, 2))
    np.testing.assert_array_equal(img, np.flip(np.rot90(image, k), axis=axis))
    np.testing.assert_array_equal(lab, np.flip(np.rot90(label, k), axis=axis))


def test_crop_of_a_large_volume_is_a_window_of_it():
    image, label = marked((20, 18, 12))
    label[...] = (image % 3 == 0)
    rng = np.random.default_rng(1)
    for _ in range(10):
        img, lab = data.random_crop(image, label, (8, 6, 4), rng)
        assert img.shape == (8, 6, 4) and lab.shape == (8, 6, 4)
        assert img.flags.c_contiguous and lab.flags.c_contiguous
        flat = int(img[0, 0, 0])  # arange values give the crop's offset back
        i0, j0, k0 = np.unravel_index(flat, image.shape)
        np.testing.assert_array_equal(img, image[i0:i0 + 8, j0:j0 + 6, k0:k0 + 4])
        np.testing.assert_array_equal(lab, label[i0:i0 + 8, j0:j0 + 6, k0:k0 + 4])


def test_crop_reaches_every_offset():
    image = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    rng = np.random.default_rng(2)
    starts = {float(data.random_crop(image, None, (4, 1, 1), rng)[0][0, 0, 0]) for _ in range(300)}
    # every start (i0 in 0..2, j0 and k0 in 0..1), the last one included
    assert starts == {float(i * 4 + j * 2 + k) for i in range(3) for j in range(2) for k in range(2)}


@pytest.mark.parametrize("shape, pad", [
    # axis 0: 5 < 8 -> (8 - 5) // 2 + 3 = 4; axis 1: one voxel longer than the patch -> (-1) // 2 + 3 = 2
    # (the official code pads it too); axis 2: 10 == 10 -> 3
    ((5, 13, 10), [(4, 4), (2, 2), (3, 3)]),
    # axis 1 three voxels longer -> (-3) // 2 + 3 = 1; axis 0 five longer -> (-5) // 2 + 3 = 0
    ((13, 15, 10), [(0, 0), (1, 1), (3, 3)]),
    # no axis as short as the patch: nothing padded, even axes only a voxel longer
    ((9, 13, 11), [(0, 0), (0, 0), (0, 0)]),
])
def test_crop_pads_like_the_official_code(shape, pad):
    """The official RandomCrop: once any axis is no longer than the patch, every axis gets
    max((patch - size) // 2 + 3, 0) zeros on each side (axes 1-4 voxels longer than the patch included)."""
    image = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)  # no zero inside
    label = (image % 2).astype(np.uint8)
    padded_image, padded_label = np.pad(image, pad), np.pad(label, pad)
    patch = (8, 12, 10)
    rng = np.random.default_rng(3)
    for _ in range(20):
        state = rng.bit_generator.state
        img, lab = data.random_crop(image, label, patch, rng)
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        i0, j0, k0 = (int(replay.integers(0, n - p + 1)) for n, p in zip(padded_image.shape, patch))
        np.testing.assert_array_equal(img, padded_image[i0:i0 + 8, j0:j0 + 12, k0:k0 + 10])
        np.testing.assert_array_equal(lab, padded_label[i0:i0 + 8, j0:j0 + 12, k0:k0 + 10])


def test_crop_margin_reaches_past_the_border_with_background():
    shape = (20, 10, 12)
    image = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)  # no zero inside
    label = np.ones(shape, np.uint8)
    margin = (4, 2, 0)
    padded_image = np.pad(image, [(m, m) for m in margin])
    padded_label = np.pad(label, [(m, m) for m in margin])
    rng, plain = np.random.default_rng(5), np.random.default_rng(5)
    starts = set()
    for _ in range(200):
        state = rng.bit_generator.state
        img, lab = data.random_crop(image, label, (8, 8, 6), rng, margin)
        data.random_crop(image, label, (8, 8, 6), plain)
        assert rng.bit_generator.state == plain.bit_generator.state  # the same draws: resumable runs agree
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        i0, j0, k0 = (int(replay.integers(0, n - p + 1)) for n, p in zip((28, 14, 12), (8, 8, 6)))
        np.testing.assert_array_equal(img, padded_image[i0:i0 + 8, j0:j0 + 8, k0:k0 + 6])
        np.testing.assert_array_equal(lab, padded_label[i0:i0 + 8, j0:j0 + 8, k0:k0 + 6])
        starts.add(i0)
    # The crop starts before the image (i0 < 4) and ends after it (i0 > 12): outside is 0, background.
    assert min(starts) == 0 and max(starts) == 20


def test_preset_crop_margin_is_a_fraction_of_the_patch():
    from CAMLSegmentationLib.training.presets import PresetError, TrainingPreset

    assert TrainingPreset.from_dict({"crop_margin": 0.25}).crop_margin == 0.25
    with pytest.raises(PresetError, match="crop_margin"):
        TrainingPreset.from_dict({"crop_margin": 1.5})


def test_roi_crop_is_a_real_sub_box_cutting_image_and_label_alike():
    shape = (30, 20, 12)
    image = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    label = (image % 3 == 0).astype(np.uint8)
    rng, plain = np.random.default_rng(3), np.random.default_rng(3)
    cut, sizes = 0, []
    for _ in range(400):
        img, lab = data.random_roi(image, label, rng, 0.5, 0.6)
        data.random_roi(image, None, plain, 0.0, 0.6)
        assert rng.bit_generator.state == plain.bit_generator.state  # draws do not depend on the probability
        assert img.shape == lab.shape
        if img.shape == shape:
            continue
        cut += 1
        sizes.append(img.shape)
        # A real crop: the box's first voxel locates it, and image and label agree voxel for voxel.
        i, j, k = np.unravel_index(int(img[0, 0, 0]) - 1, shape)
        box = (slice(i, i + img.shape[0]), slice(j, j + img.shape[1]), slice(k, k + img.shape[2]))
        np.testing.assert_array_equal(img, image[box])
        np.testing.assert_array_equal(lab, label[box])
    assert 150 < cut < 250  # about half the cases
    sizes = np.array(sizes)
    assert (sizes >= np.floor(0.6 * np.array(shape))).all() and (sizes <= shape).all()
    assert (sizes.min(0) <= np.ceil(0.65 * np.array(shape))).all()  # the whole range is drawn
    # Probability 1 and a full-size minimum leave the image whole.
    img, lab = data.random_roi(image, label, np.random.default_rng(0), 1.0, 1.0)
    np.testing.assert_array_equal(img, image)


def test_preset_roi_fields_are_checked():
    from CAMLSegmentationLib.training.presets import PresetError, TrainingPreset

    preset = TrainingPreset.from_dict({"roi_probability": 0.5, "roi_min_fraction": 0.7})
    assert (preset.roi_probability, preset.roi_min_fraction) == (0.5, 0.7)
    assert TrainingPreset().roi_probability == 0.0  # off unless a preset asks for it
    with pytest.raises(PresetError, match="roi_probability"):
        TrainingPreset.from_dict({"roi_probability": 1.5})
    with pytest.raises(PresetError, match="roi_min_fraction"):
        TrainingPreset.from_dict({"roi_min_fraction": 0.0})


def test_crop_rejects_bad_arguments():
    image, label = marked()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="patch size"):
        data.random_crop(image, label, (4, 4), rng)
    with pytest.raises(ValueError, match="label shape"):
        data.random_crop(image, label[:-1], (4, 4, 4), rng)


def test_same_seed_same_augmentation_and_state_resumes():
    image, label = marked((16, 14, 10))

    def run(rng, n=5):
        out = []
        for _ in range(n):
            img, lab = data.random_rot_flip(image, label, rng)
            out.append(data.random_crop(img, lab, (6, 6, 6), rng))
        return out

    a, b = run(np.random.default_rng(42)), run(np.random.default_rng(42))
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    c = run(np.random.default_rng(43))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))

    # saving the generator state mid-run and restoring it gives the rest of the run exactly
    rng = np.random.default_rng(7)
    run(rng, 2)
    state = rng.bit_generator.state
    rest = run(rng, 3)
    resumed = np.random.default_rng(0)
    resumed.bit_generator.state = state
    for (ia, _), (ib, _) in zip(rest, run(resumed, 3)):
        np.testing.assert_array_equal(ia, ib)


def test_augmentation_accepts_no_label():
    image, _ = marked()
    rng = np.random.default_rng(0)
    img, lab = data.random_rot_flip(image, None, rng)
    assert lab is None
    img, lab = data.random_crop(img, None, (4, 4, 4), rng)
    assert lab is None and img.shape == (4, 4, 4)


# --------------------------------------------------------------------------- real LA data (optional)


@pytest.mark.la_data
def test_two_real_la_cases():
    if not (LA_ROOT / "train.list").is_file():
        pytest.skip(f"LA data not found at {LA_ROOT} (set CAML_LA_ROOT to run this test)")
    source = data.open_source(LA_ROOT)
    ids = source.case_ids()
    assert len(ids) == 80
    split = data.make_split(source, labeled=8, val_last=8, min_labeled=2)
    assert split.labeled == ids[:8] and split.validation == ids[-8:] and len(split.unlabeled) == 72
    manifest: Dict[str, str] = {}
    manifest_path = LA_ROOT / "MANIFEST.tsv"
    if manifest_path.is_file():
        for line in manifest_path.read_text().splitlines()[1:]:
            parts = line.split("\t")
            manifest[parts[0]] = parts[1]
    for case in data.load_cases(source, ids[:2]):
        assert case.image.ndim == 3 and case.image.shape[2] == 88
        assert case.label.shape == case.image.shape and set(np.unique(case.label)) == {0, 1}
        # The files were z-scored over the whole MRI before the crop around the atrium: that
        # scale means nothing here, the crop is normalised from its own voxels like any input.
        with h5py.File(LA_ROOT / data.LA_CASES_FOLDER / case.case_id / data.LA_FILE_NAME, "r") as f:
            np.testing.assert_allclose(case.image, normalize_intensity(f["image"][()]), atol=1e-6)
        if case.case_id in manifest:
            assert "x".join(map(str, case.image.shape)) == manifest[case.case_id]
