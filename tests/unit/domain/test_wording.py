from berth.domain.wording import counted
from berth.services.retention_records import run_note


def test_a_count_of_one_is_singular_and_others_plural_with_thousands_separated() -> None:
    assert counted(1, "image") == "1 image"
    assert counted(0, "image") == "0 images"
    assert counted(1204, "repository", "repositories") == "1,204 repositories"
    assert counted(1, "repository", "repositories") == "1 repository"


def test_a_retention_run_note_counts_in_words_that_agree() -> None:
    assert run_note("p", True, 0, 0) == "A real run would delete nothing now."
    assert run_note("p", True, 1, 0).startswith("A real run would delete this 1 image now;")
    assert run_note("p", True, 2, 0).startswith("A real run would delete these 2 images now;")
    assert run_note("p", False, 1, 1).startswith(
        "Deleted 1 image. 1 planned image changed since the run's snapshot and was kept."
    )
    assert run_note("p", False, 3, 2).startswith(
        "Deleted 3 images. 2 planned images changed since the run's snapshot and were kept."
    )


def test_a_run_note_names_the_garbage_collection_its_reader_asks_for() -> None:
    assert run_note("p", False, 2, 0).endswith(
        "next garbage collection (POST /api/v1/projects/p/gc, or the console's Management page)."
    )
    assert run_note("p", False, 2, 0, "berth gc run p").endswith(
        "next garbage collection (berth gc run p)."
    )
