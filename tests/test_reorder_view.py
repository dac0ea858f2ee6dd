"""The "TSP priority" tab's data, as Label Studio's Data Manager stores a view."""

from __future__ import annotations

from tsp_cli.commands.reorder import _view_payload

# what /api/dm/columns lists for the demo project, keyed as views name them
COLUMNS = [("tasks:data.image", "Image"), ("tasks:data.source_name", "Unknown"), ("tasks:id", "Number"),
           ("tasks:inner_id", "Number"), ("tasks:completed_at", "Datetime"), ("tasks:total_annotations", "Number"),
           ("tasks:predictions_score", "Number"), ("tasks:annotators", "List")]


def test_tab_hides_all_but_id_image_and_score():
    data = _view_payload(COLUMNS)
    hidden = ["tasks:data.source_name", "tasks:inner_id", "tasks:completed_at", "tasks:total_annotations",
              "tasks:annotators"]
    assert data["hiddenColumns"] == {"explore": hidden, "labeling": hidden}
    assert data["columnsDisplayType"] == {"tasks:data.image": "Image"}
    assert data["ordering"] == ["tasks:predictions_score"] and data["type"] == "list"
    assert data["filters"]["items"][0]["filter"] == "filter:tasks:total_annotations"


def test_unknown_columns_keep_the_defaults():
    data = _view_payload(None)
    assert "hiddenColumns" not in data and data["ordering"] == ["tasks:predictions_score"]
