"""What ``celery -A celery_worker worker`` imports: the app from the factory, and its Celery app."""
import flask_ampalibe
from botapp import create_app

flask_app = create_app()
celery = flask_ampalibe.celery_app(flask_app)
