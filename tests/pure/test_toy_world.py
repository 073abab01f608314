"""The shapes world: captions, ground-truth masks, held-out split, and the checker's scoring on true images."""
import torch

from toy import world


def test_scenes_are_seeded_and_varied():
    a, b = world.scenes(40, seed=3), world.scenes(40, seed=3)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    assert {len(s.items) for s in a} == {1, 2, 3}
    assert len({s.caption for s in a}) > 30
    assert [s.caption for s in world.scenes(40, seed=4)] != [s.caption for s in a]


def test_caption_wording():
    items = (world.Item("red", "circle", "left"), world.Item("orange", "square", "right"))
    assert world.caption_of(items) == "a red circle on the left and an orange square on the right"
    assert world.caption_of(items, positions=False) == "a red circle and an orange square"


def test_masks_are_the_visible_pixels_of_each_shape_in_its_colour():
    for scene in world.scenes(30, seed=0):
        assert scene.masks.shape == (len(scene.items), world.SIZE, world.SIZE)
        labels = world.classify(scene.image)
        for item, mask in zip(scene.items, scene.masks):
            assert mask.sum() > 20
            assert (labels[mask] == list(world.COLOURS).index(item.colour)).all()
            assert (mask.float() <= world.position_mask(item.position)).all(), "shape outside its position zone"
        assert (scene.masks.sum(0) <= 1).all(), "visible masks never overlap"


def test_items_are_distinct_in_colour_and_position():
    for scene in world.scenes(60, seed=1):
        assert len({i.colour for i in scene.items}) == len(scene.items)
        assert len({i.position for i in scene.items}) == len(scene.items)


def test_held_out_captions_never_reach_training():
    train = {s.caption for s in world.scenes(300, seed=0)}
    held = {s.caption for s in world.scenes(100, seed=0, held_out=True)}
    assert not train & held
    assert all(world.is_held_out(c) for c in held) and not any(world.is_held_out(c) for c in train)


def test_score_passes_ground_truth_and_fails_wrong_images():
    scenes = world.scenes(30, seed=2)
    for scene in scenes:
        colour, position = world.score(scene.image, scene)
        assert all(colour) and all(position)
    blank = torch.ones(3, world.SIZE, world.SIZE)
    colour, position = world.score(blank, scenes[0])
    assert not any(colour) and not any(position)
    scene = next(s for s in scenes if any(i.position in ("left", "right") for i in s.items))
    _, position = world.score(scene.image.flip(-1), scene)  # mirrored: left and right trade places
    assert not all(position)


def test_scene_for_given_items_and_sizes():
    items = (world.Item("blue", "star", "top"),)
    small, big = world.scene_for(items, seed=5), world.scene_for(items, seed=5, size=128)
    assert big.image.shape == (3, 128, 128)
    assert abs(big.masks.float().mean() - small.masks.float().mean()) < 0.01
